"""Per-key limits: the rules (local and Redis, behind one Protocol), the limiter that picks
between them, and what a request reserves."""
