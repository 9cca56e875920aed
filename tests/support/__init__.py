"""Helpers the test modules share: waiting, raw HTTP, the recording rig, certificates, the proxy process."""
