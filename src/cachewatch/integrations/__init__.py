"""Framework integrations: cachewatch for objects whose HTTP client a framework hides or shares.

Most clients need nothing here: :func:`cachewatch.wrap` instruments the anthropic and
openai SDK clients and any httpx/httpx2 client, and frameworks that accept one of those
(pydantic-ai's ``anthropic_client=`` / ``openai_client=`` / ``http_client=``, LiteLLM's
``client=``) take it as it is. The helpers below are for the objects that offer no such
hook:

* :func:`instrument_langchain` for LangChain's ``ChatAnthropic`` and ``ChatOpenAI``;
* :func:`instrument_dashscope` for the dashscope 2.0 ``Client`` / ``AsyncClient``.

Each gives the object its own instrumented HTTP client that borrows the connection pool
of the one it had, so other objects sharing that client are never instrumented with
this one's options, and refuses (``ValueError``) an object that already goes through
cachewatch. No framework is imported until one of its objects is passed in.
"""

from ._dashscope import instrument_dashscope
from ._langchain import instrument_langchain

__all__ = ["instrument_dashscope", "instrument_langchain"]
