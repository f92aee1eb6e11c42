"""The usage record and its money: token partitions, records, prices, cost and savings.

Its public types (:class:`~cachewatch.UsageRecord`, :class:`~cachewatch.TokenUsage`,
:class:`~cachewatch.PriceTable`...) are imported from :mod:`cachewatch`; nothing is public here.
"""

__all__: list[str] = []
