"""The lab's own environments and wrappers, registered with Gymnasium on import.

Entry points are strings, so importing this package stays cheap (no torch until an env is built).
"""

import gymnasium as gym

# SeqGAN's token generation (envs/seqgen.py): one sequence per episode, the prefix as the
# observation and the next token as the action. ``gym.make_vec`` builds the natively batched
# version, which the lab's loop uses.
if "SeqGen-v0" not in gym.registry:
    gym.register(
        id="SeqGen-v0",
        entry_point="gymlab.envs.seqgen:SeqGenEnv",
        vector_entry_point="gymlab.envs.seqgen:SeqGenVectorEnv",
    )
