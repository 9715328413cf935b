"""A local emulator of the Anthropic API (Messages, count_tokens, Message Batches) for tests and benchmarks.

Importing this package stays cheap: the aiohttp server lives in `batchrun.emulator.server`.
"""

from .config import EmulatorConfig, config_from_argv, config_to_argv

__all__ = ["EmulatorConfig", "config_from_argv", "config_to_argv"]
