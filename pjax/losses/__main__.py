"""`python -m pjax.losses`: print the objective registry as a markdown table."""

from pjax.losses import markdown_table

print(markdown_table())
