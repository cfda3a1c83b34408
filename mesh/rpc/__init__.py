"""gRPC wiring shared by every service: the server, its interceptors, validation.

* :mod:`mesh.rpc.server` — ``GrpcServer``: interceptors, health, reflection, metrics, shutdown;
* :mod:`mesh.rpc.interceptors` — one concern per module (auth, deadline, errors, logging, metrics, validation);
* :mod:`mesh.rpc.validation` — protovalidate rules from the contract.
"""
