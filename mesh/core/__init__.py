"""The runtime core every service imports: errors, ids, events, config, tokens, headers.

Nothing here starts a process or opens a connection; it depends on the standard
library, protobuf and PyJWT only.
"""
