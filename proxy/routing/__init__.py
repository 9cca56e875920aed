"""Host + path -> where a request goes, and the snapshot a reload swaps whole. Pure."""
