"""The local CA, certificates by SNI, and trust stores."""
