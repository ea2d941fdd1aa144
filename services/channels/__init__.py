"""One module per provider: signature check, inbound parsing, status mapping (and, later, sending)."""
