"""Pure domain core of Points.

Nothing here imports ray, sqlalchemy, redis or fastapi, and nothing reads the clock:
time is always an argument. That keeps the ledger math replayable and unit-tested in
microseconds.
"""
