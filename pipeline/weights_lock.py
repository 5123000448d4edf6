"""One lock for every weight load and every model construction the app does.

diffusers, transformers, accelerate and peft load weights by patching process-wide functions for the length of a load
(``nn.Module.register_parameter`` so that new parameters go to the meta device, ``torch.nn.init`` so that they skip
initialisation). Two threads that load at once (the training worker and a generation, or two workspaces' trainings)
can restore each other's patches in the wrong order and leave one in place for good: from then on every module the
process builds has meta weights, and every training and generation fails with "Cannot copy out of meta tensor".
A thread that builds a module while another loads gets the same meta weights. So both hold this lock.
"""

from __future__ import annotations

import threading

#: Held around ``from_pretrained``, LoRA loading and injection, weight placement and module construction.
#: Re-entrant, so that a helper holding it may call another that takes it. The cost: loads wait for each other (two
#: trainings on two GPUs load one after the other; a generation may wait for a training's load).
WEIGHTS_LOCK = threading.RLock()
