"""The trust boundary: what the grid reads from peers it does not trust.

* :mod:`grid.protocol.messages` lists every message a node or a data
  scientist's client may send a grid scheduler (and a node another node);
* :mod:`grid.protocol.payload` checks a message's frames so that nothing in
  it is unpickled;
* :mod:`grid.protocol.comm` is distributed's TLS transport with both checks
  applied to untrusted peers, registered as the ``tls`` comm backend.
* :mod:`grid.protocol.requests` checks job requests (client and scheduler
  alike) and names the states of a job.

This package imports neither the scheduler side nor the node side of the
grid; both, and the client, use it.
"""

from grid.protocol.comm import install

__all__ = ["install"]
