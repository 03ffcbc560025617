/* zmqutil.h: ZeroMQ helpers shared by every role (libzmq stable API only: no DRAFT
 * sockets, no zmq_poller).
 *
 * Caveats: one zmq context per process, created after fork/exec; sockets are not
 * thread-safe; ZMQ_FD is edge-triggered: after every wake-up, and after every send or
 * receive, re-read ZMQ_EVENTS and drain until it no longer says ZMQ_POLLIN.
 */
#ifndef LK_ZMQUTIL_H
#define LK_ZMQUTIL_H

#include "codec.h"
#include "errors.h"

#include <stddef.h>
#include <stdint.h>

/* For an ipc:// endpoint, creates the socket file's directory (mode 0700). Other
 * transports: nothing. Returns 0 or -errno. */
int lk_zmq_prepare_endpoint(const char *endpoint) LK_WUR;

/* Sets the options every latchkey socket has: ZMQ_LINGER 0, ZMQ_MAXMSGSIZE LK_MSG_MAX
 * (the limit is per wire frame; routing ids are not frames on the wire), bounded
 * ZMQ_SNDHWM/ZMQ_RCVHWM. Returns 0 or -errno. */
int lk_zmq_set_defaults(void *sock) LK_WUR;

/* Encodes m and sends it as one frame, preceded by a routing-id frame when id != NULL
 * (ROUTER sockets). flags are passed to zmq_send (e.g. ZMQ_DONTWAIT).
 * Returns 0, -errno (e.g. -EAGAIN, -EHOSTUNREACH) or an lk_msg_encode error. */
int lk_zmq_send_msg(void *sock, const uint8_t *id, size_t idlen, const struct lk_msg *m,
                    int flags) LK_WUR;

/* Receives one message. When id != NULL (ROUTER) the first frame is the routing id,
 * copied into id (capacity *idlen, updated to its length). The payload frame is decoded
 * into *out. Extra frames are consumed and make the result LK_EMALFORMED.
 * Returns 0, -EAGAIN (nothing to read with ZMQ_DONTWAIT), -errno, or a decode error. */
int lk_zmq_recv_msg(void *sock, uint8_t *id, size_t *idlen, struct lk_msg *out, int flags) LK_WUR;

#endif
