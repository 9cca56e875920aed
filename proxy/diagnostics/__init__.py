"""Answers to "why does it not work": ports, nearby listeners, doctor, host hints, the access log, the inspector."""
