"""Helpers the test modules share, by what they do: waiting, raw HTTP, the recording rig, the proxy process, reloads, certificates."""
