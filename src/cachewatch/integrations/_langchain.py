"""``instrument_langchain()``: cachewatch for one LangChain chat model, and only that one.

``ChatAnthropic`` takes no HTTP client, and both it and ``ChatOpenAI`` (without
``http_client=``) use an httpx client that ``langchain-anthropic``/``langchain-openai``
cache per base URL and timeout, shared by every model built with the same settings. So
wrapping a model's client would instrument all of its siblings. Instead, each side (sync
and async) of the model gets its own SDK client (the SDK's ``with_options()`` copy, same
key, base URL, headers and retries) over its own HTTP client that borrows the shared
one's connection pool (see ``_clients``).

The model is recognised by class name (``ChatAnthropic``, or any subclass of
``BaseChatOpenAI`` such as ``ChatOpenAI`` and ``AzureChatOpenAI``), so importing this
module imports no LangChain package.
"""

from __future__ import annotations

from typing import Any, TypeVar

from ..engine._engine import Engine
from ._clients import AlreadyInstrumentedError, own_client

__all__ = ["instrument_langchain"]

M = TypeVar("M")


def _kind(model: Any) -> str | None:
    for cls in type(model).__mro__:
        root = cls.__module__.partition(".")[0]
        if root == "langchain_anthropic" and cls.__name__ == "ChatAnthropic":
            return "anthropic"
        if root == "langchain_openai" and cls.__name__ == "BaseChatOpenAI":
            return "openai"
    return None


def instrument_langchain(model: M, **options: Any) -> M:
    """Instrument one LangChain chat model with cachewatch and return it.

    Supports ``langchain_anthropic.ChatAnthropic`` and ``langchain_openai.ChatOpenAI``
    (any ``BaseChatOpenAI``), sync and async, including streaming. Other models that
    share an HTTP client with this one stay uninstrumented; call this once per model,
    before ``bind_tools()`` or after (bindings keep the same model).

    Args:
        model: the chat model.
        **options: the keyword arguments of :class:`~cachewatch.CacheWatchTransport`
            (``breakpoints``, ``registry``, ``tracer_provider``, ``logger``, ``prices``...).

    Raises:
        TypeError: ``model`` is not a supported LangChain chat model.
        ValueError: the model's HTTP client already goes through cachewatch (this model
            was instrumented before, was given an HTTP client wrapped by
            :func:`cachewatch.wrap`, or shares a client someone wrapped in place).

    Example::

        llm = cachewatch.instrument_langchain(ChatAnthropic(model="claude-sonnet-4-6"))
        llm.invoke("Hello")
    """
    kind = _kind(model)
    if kind is None:
        raise TypeError(
            "cachewatch.instrument_langchain() expects a langchain_anthropic.ChatAnthropic or a "
            f"langchain_openai chat model; got {type(model).__module__}.{type(model).__qualname__}"
        )
    m: Any = model
    if kind == "anthropic":
        # Cached properties: reading them builds the SDK clients the model would have used.
        sdk_clients = {"_client": m._client, "_async_client": m._async_client}
    else:
        sdk_clients = {"root_client": m.root_client, "root_async_client": m.root_async_client}
    engine = Engine(**options)
    replaced: dict[str, Any] = {}
    for name, sdk in sdk_clients.items():
        if sdk is None:  # ChatOpenAI(client=...) with a custom completions object
            continue
        try:
            http = own_client(sdk._client, engine)
        except AlreadyInstrumentedError:
            raise AlreadyInstrumentedError(
                f"this {type(model).__name__}'s HTTP client already goes through cachewatch: it was "
                "instrumented before, or it was given (or shares) a client wrapped by cachewatch.wrap(). "
                "Instrument each model once with cachewatch.instrument_langchain() and do not wrap "
                "its clients."
            ) from None
        replaced[name] = sdk.with_options(http_client=http)
    # Only now that every side succeeded: the model is changed whole or not at all.
    for name, sdk in replaced.items():
        m.__dict__[name] = sdk
    if kind == "openai":
        if "root_client" in replaced:
            m.__dict__["client"] = replaced["root_client"].chat.completions
        if "root_async_client" in replaced:
            m.__dict__["async_client"] = replaced["root_async_client"].chat.completions
    return model
