"""`leantrain tune`: search the recipe's cost-relevant choices for the cheapest one that reaches a target."""
