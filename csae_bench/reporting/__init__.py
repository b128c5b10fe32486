"""Reading results back: the leaderboard, its table and plots."""
