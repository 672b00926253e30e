"""The coordinator process: clients in, chunks to workers, ordered and paced audio out.

`core.CoordinatorCore` holds every stream decision and touches no socket;
`shell.CoordinatorShell` runs it on uvloop behind the ZeroMQ sockets. Neither
imports torch.
"""
