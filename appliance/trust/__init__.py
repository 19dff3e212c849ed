"""The trust chain: nothing is loaded before its bytes match a manifest we accept."""
