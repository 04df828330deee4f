"""The lab's agents, one algorithm per file; see ``gymlab.agent.AGENTS`` for their names."""
