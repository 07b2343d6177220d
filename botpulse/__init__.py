"""botpulse: statistics and uptime for bot fleets. This package holds the `botpulse` command."""
