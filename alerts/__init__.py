"""The alert evaluator (`botpulse alerts`): rules over what the workers wrote, incidents once
each, notifications to Discord and signed webhooks. See docs/alerts.md."""
