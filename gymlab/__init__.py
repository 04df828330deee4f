"""gymlab: a reinforcement-learning agent lab.

Agents plug into one shared rollout loop (``gymlab.loop``) through the small protocol in
``gymlab.agent``; everything observable (TensorBoard scalars, checkpoints, videos) is written by
the core into one run folder that every other command reads.
"""

__version__ = "0.1.0"
