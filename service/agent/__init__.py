"""The agent: the LLM client, the prompt and the tool loop of a turn, the tools, variables, post-chat analysis."""
