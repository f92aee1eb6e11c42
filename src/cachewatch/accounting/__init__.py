"""The usage record and its money: token partitions, records, prices, cost and savings."""
