"""Optional: push a finished model to the Hugging Face Hub, when the user gives a write token.

The upload holds exactly what the download zip holds (pipeline.export.export_files), with the model card as README.md,
so the Hub shows the trigger word and usage. The token is used for this call only: never stored or logged.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from pipeline.export import export_files
from pipeline.library import Library

logger = logging.getLogger(__name__)

# Accounts of the tokens API callers sent, by the token's hash: the Hub's whoami is rate-limited, and a caller
# sends its token with every request. A refused token is remembered for a shorter while.
_ACCOUNTS: dict[str, tuple[float, str | None]] = {}
_ACCOUNTS_LOCK = threading.Lock()
ACCOUNT_SECONDS, REFUSED_SECONDS = 600.0, 60.0


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
    """The Hugging Face account a token belongs to, as the Hub's whoami says (remembered for a while); raises
    HubError for a token the Hub refuses or when it cannot be asked. The token is never stored or logged."""
    key = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _ACCOUNTS_LOCK:
        until, name = _ACCOUNTS.get(key, (0.0, None))
    if until > now:
        if name is None:
            raise HubError("this Hugging Face token was refused by the Hub")
        return name
    try:
        name = HfApi(endpoint=endpoint).whoami(token=token, cache=False)["name"]
    except Exception as exc:  # noqa: BLE001 - the Hub's errors vary; none may leak the token
        refused = getattr(getattr(exc, "response", None), "status_code", None) == 401
        if refused:
            with _ACCOUNTS_LOCK:
                _ACCOUNTS[key] = (now + REFUSED_SECONDS, None)
            raise HubError("this Hugging Face token was refused by the Hub") from None
        raise HubError(f"the Hub could not be asked whose token this is ({type(exc).__name__})") from None
    with _ACCOUNTS_LOCK:
        _ACCOUNTS[key] = (now + ACCOUNT_SECONDS, name)
    return name
