"""Optional: push a finished model to the Hugging Face Hub, when the user gives a write token.

The upload holds exactly what the download zip holds (pipeline.library.export.export_files), with the model card as
README.md,
so the Hub shows the trigger word and usage. The token is used for this call only: never stored or logged.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from pipeline.library.catalog import Library
from pipeline.library.export import export_files

logger = logging.getLogger(__name__)

# Accounts of the tokens API callers sent, by the token's hash: the Hub's whoami is rate-limited, and a caller
# sends its token with every request. Short, so that a revoked token stops working soon.
_ACCOUNTS: dict[str, tuple[float, str | None]] = {}
_ACCOUNTS_LOCK = threading.Lock()
_LOOKUPS: deque[float] = deque()  # when unknown tokens were asked about, for NEW_TOKENS_PER_MINUTE
ACCOUNT_SECONDS, REFUSED_SECONDS = 120.0, 60.0
NEW_TOKENS_PER_MINUTE = 30
WHOAMI_TIMEOUT_SECONDS = 10.0
_TOKEN_SHAPE = re.compile(r"^hf_[A-Za-z0-9]{30,}$")  # a user access token (an app's sign-in token is hf_oauth_…)
_REFUSED = "this Hugging Face token does not open a workspace here (only a user's own access token does)"


class HubError(ValueError):
    """The push did not happen; the message says why and never contains the token."""


def push_to_hub(library: Library, model_id: str, repo_id: str, token: str, *, private: bool = True,
                endpoint: str | None = None) -> str:
    """Upload the model's files to the Hub repo ``repo_id`` ("user/name"), creating it (private by default).

    Returns the repo's URL. ``endpoint`` is for a self-hosted Hub mirror.
    """
    if not token or not token.strip():
        raise HubError("token: give a Hugging Face token with write access (https://huggingface.co/settings/tokens)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(f"repo_id: {repo_id!r} is not a valid repo name ({error}); use 'your-user/model-name'") from None
    if "/" not in repo_id:
        raise HubError(f"repo_id: {repo_id!r} needs the owner, e.g. 'your-user/{repo_id}'")
    files = export_files(library, model_id)
    api = HfApi(endpoint=endpoint, token=token.strip())
    with tempfile.TemporaryDirectory(prefix="likeness-hub-") as staging:
        root = Path(staging)
        for name, content in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=root, commit_message="Upload LoRA trained with Likeness")
        # The Hub client raises its HTTP library's errors, HfHubHTTPError and OSError (offline mode); each means
        # "not pushed". from None: chained errors may carry request headers.
        except Exception as error:
            reason = str(error).replace(token.strip(), "***")
            raise HubError(f"repo_id: could not push to {repo_id!r}: {type(error).__name__}: {reason}. "
                           "Check the token has write access and the Hub is reachable") from None
    logger.info("hub: pushed model %s to %s", model_id, url)
    return str(url)


def account_of_token(token: str, *, endpoint: str | None = None) -> str:
    """The Hugging Face user whose personal access token this is, as the Hub's whoami says (remembered for a short
    while); raises HubError for anything else — a token the Hub refuses, an organisation's, a sign-in token another
    app was given — or when the Hub cannot be asked. The token is never stored or logged."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if not _TOKEN_SHAPE.match(token):
        raise HubError("this is not a Hugging Face access token (hf_…)")
    key = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _ACCOUNTS_LOCK:
        until, name = _ACCOUNTS.get(key, (0.0, None))
        if until > now:
            if name is None:
                raise HubError(_REFUSED)
            return name
        # Anyone may send made-up tokens: bound what they cost (memory, and the Space's whoami allowance).
        for old in [k for k, (expiry, _name) in _ACCOUNTS.items() if expiry <= now]:
            del _ACCOUNTS[old]
        while _LOOKUPS and _LOOKUPS[0] < now - 60:
            _LOOKUPS.popleft()
        if len(_LOOKUPS) >= NEW_TOKENS_PER_MINUTE:
            raise HubError("too many unknown tokens in the last minute: try again shortly")
        _LOOKUPS.append(now)
    try:
        response = get_session().get(f"{endpoint or constants.ENDPOINT}/api/whoami-v2",
                                     headers={"authorization": f"Bearer {token}"}, timeout=WHOAMI_TIMEOUT_SECONDS)
        answer = response.json() if response.status_code == 200 else {}
    except Exception as exc:  # network errors vary; none may carry the token out
        raise HubError(f"the Hub could not be asked whose token this is ({type(exc).__name__})") from None
    if response.status_code not in (200, 401):
        raise HubError(f"the Hub could not be asked whose token this is (HTTP {response.status_code})")
    # Only a user's own personal access token: an organisation's token, or the sign-in token a user gave another
    # app (whoami names its user too), must not open that user's photos here.
    personal = answer.get("type") == "user" and (answer.get("auth") or {}).get("type") == "access_token"
    name = str(answer.get("name") or "") if personal else ""
    with _ACCOUNTS_LOCK:
        _ACCOUNTS[key] = (now + (ACCOUNT_SECONDS if name else REFUSED_SECONDS), name or None)
    if not name:
        raise HubError(_REFUSED)
    return name
