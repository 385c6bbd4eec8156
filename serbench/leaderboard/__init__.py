"""The leaderboard (SPEC §7): entries built from run directories with the standard protocol,
validated as data (never executed), verified by re-running them, rendered as tables and plots.
See docs/leaderboard.md."""
