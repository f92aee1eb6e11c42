"""The layout walk: a parsed request body in, its :class:`~cachewatch.planning._layout.Layout` out.

Data flow: request body -> **walk** -> layout -> planner and miss diagnosis.

One walker per wire format that takes markers:

* ``messages`` (Anthropic Messages and the relays that speak it): ``_walk_anthropic``;
* ``chat_completions`` (OpenAI-compatible, DashScope compatible mode): leading
  ``system``/``developer`` messages are the system region; ``tools`` are not
  positions (no marker goes on them) but are part of every prefix: ``_walk_openai``;
* ``dashscope_generation`` (DashScope native): as chat completions, under
  ``input.messages`` and ``parameters.tools``: ``_walk_openai``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._layout import Layout, new_layout
from ._tokens import PrefixCounter
from ._walk_anthropic import walk_anthropic
from ._walk_openai import walk_openai

__all__ = ["walk"]


def walk(
    api: str,
    obj: Mapping[str, Any],
    counter: PrefixCounter,
    *,
    markers_on_tools: bool = False,
    remove_invalid: bool = False,
) -> Layout | None:
    """Flatten ``obj`` (a parsed body of ``api``) into its layout; None for an invalid shape.

    Feeds every block to ``counter`` (running raw token estimates). With
    ``remove_invalid``, caller markers the provider would reject are deleted from
    ``obj`` and listed in ``Layout.removed``.
    """
    layout = new_layout(api)
    if api == "messages":
        return walk_anthropic(obj, counter, markers_on_tools, remove_invalid, layout)
    if api == "chat_completions":
        _tools(obj.get("tools"), counter, layout)
        return walk_openai(obj.get("messages"), counter, remove_invalid, layout, native=False)
    if api == "dashscope_generation":
        inp = obj.get("input")
        if not isinstance(inp, dict):
            return None
        params = obj.get("parameters")
        _tools(params.get("tools") if isinstance(params, dict) else None, counter, layout)
        return walk_openai(inp.get("messages"), counter, remove_invalid, layout, native=True)
    return None


def _tools(tools: Any, counter: PrefixCounter, layout: Layout) -> None:
    """Function definitions before the messages (``tools``, or ``parameters.tools`` on the
    native API): part of every prefix, so counted first; not positions."""
    if isinstance(tools, list):
        counter.add_tools(tools)
        for tool in tools:
            counter.add_json(tool)
        layout.tools = tools
