/* zmqutil.c: socket options, endpoint preparation and one-message send/receive. */
#include "zmqutil.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <zmq.h>

/* Enough for a burst of queued jobs, small enough that a stuck peer cannot make a
 * process hold an unbounded backlog. */
#define S_HWM 10000

static int s_setopt_int(void *sock, int opt, int v)
{
    return zmq_setsockopt(sock, opt, &v, sizeof v) == 0 ? 0 : -errno;
}

int lk_zmq_set_defaults(void *sock)
{
    /* ZMQ_MAXMSGSIZE bounds each frame the stream engine (tcp://, ipc://) decodes off the
     * wire, one frame at a time. A ROUTER's routing-id frame is made locally and never
     * crosses the wire as a frame (a peer's chosen id travels in the handshake, at most
     * 255 bytes), so LK_MSG_MAX alone bounds every payload. A peer sending a larger frame
     * is disconnected before the frame is buffered. inproc:// never goes through the
     * decoder: lk_zmq_recv_msg checks the size again. */
    int64_t max = LK_MSG_MAX;
    int rc = s_setopt_int(sock, ZMQ_LINGER, 0);
    rc = rc ? rc : (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max) == 0 ? 0 : -errno);
    rc = rc ? rc : s_setopt_int(sock, ZMQ_SNDHWM, S_HWM);
    rc = rc ? rc : s_setopt_int(sock, ZMQ_RCVHWM, S_HWM);
    return rc;
}

int lk_zmq_prepare_endpoint(const char *endpoint)
{
    if (!endpoint)
        return -EINVAL;
    if (strncmp(endpoint, "ipc://", 6) != 0)
        return 0;
    const char *path = endpoint + 6;
    /* "@name" is Linux's abstract namespace and "*" asks libzmq for a temporary name:
     * neither has a directory of ours. */
    if (path[0] == '@' || strcmp(path, "*") == 0)
        return 0;

    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
    size_t n = strlen(path);
    if (n >= sizeof dir)
        return -ENAMETOOLONG; /* libzmq would refuse it at bind with less context */
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0; /* in the working directory, or directly under / */
    *slash = '\0';

    /* mkdir -p, every new level 0700: the sockets in it accept any local connection, so
     * the directory is the access control. Existing directories are left as they are. */
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST)
            return -errno;
        *p = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(dir, &st) != 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int lk_zmq_send_msg(void *sock, const uint8_t *id, size_t idlen, const struct lk_msg *m,
                    int flags)
{
    uint8_t buf[LK_MSG_MAX];
    size_t len;
    int rc = lk_msg_encode(m, buf, sizeof buf, &len);
    if (rc != 0)
        return rc;
    /* A ROUTER decides at the id frame whether the message goes anywhere (it drops, or with
     * ZMQ_ROUTER_MANDATORY refuses, there); once the id frame is accepted the payload frame
     * cannot block, so a half-sent message is not left behind. */
    if (id && zmq_send(sock, id, idlen, flags | ZMQ_SNDMORE) < 0)
        return -errno;
    if (zmq_send(sock, buf, len, flags) < 0)
        return -errno;
    return 0;
}

/* Receives one frame into msg (initialized here; closed on error). The first frame takes
 * the caller's flags and reports EINTR to the caller's loop. Later frames of a multi-part
 * message are already queued (ZeroMQ delivers messages atomically), so they are read
 * blocking and a signal is simply retried: returning mid-message would leave the socket
 * off a message boundary. */
static int s_recv_frame(void *sock, zmq_msg_t *msg, int flags, int first)
{
    zmq_msg_init(msg);
    for (;;) {
        if (zmq_msg_recv(msg, sock, flags) >= 0)
            return 0;
        if (errno != EINTR || first) {
            int err = errno;
            zmq_msg_close(msg);
            return -err;
        }
    }
}

/* Reads and drops the rest of a multi-part message, so the next receive starts at a
 * message boundary. */
static int s_drain(void *sock)
{
    zmq_msg_t junk;
    int more = 1;
    while (more) {
        int rc = s_recv_frame(sock, &junk, 0, 0);
        if (rc != 0)
            return rc;
        more = zmq_msg_more(&junk);
        zmq_msg_close(&junk);
    }
    return 0;
}

int lk_zmq_recv_msg(void *sock, uint8_t *id, size_t *idlen, struct lk_msg *out, int flags)
{
    zmq_msg_t frame;
    int bad = 0;
    memset(out, 0, sizeof *out);

    int rc = s_recv_frame(sock, &frame, flags, 1);
    if (rc != 0)
        return rc;
    if (id) {
        size_t n = zmq_msg_size(&frame);
        /* An id that does not fit cannot be replied to: report it like any other
         * malformed message, after draining it. */
        if (n > *idlen) {
            bad = 1;
            *idlen = 0;
        } else {
            memcpy(id, zmq_msg_data(&frame), n);
            *idlen = n;
        }
        int more = zmq_msg_more(&frame);
        zmq_msg_close(&frame);
        if (!more)
            return LK_EMALFORMED; /* an id with no payload */
        rc = s_recv_frame(sock, &frame, 0, 0);
        if (rc != 0)
            return rc;
    }
    if (zmq_msg_more(&frame)) {
        zmq_msg_close(&frame);
        rc = s_drain(sock);
        return rc != 0 ? rc : LK_EMALFORMED;
    }
    if (bad || zmq_msg_size(&frame) > LK_MSG_MAX) {
        zmq_msg_close(&frame);
        return LK_EMALFORMED;
    }
    rc = lk_msg_decode(zmq_msg_data(&frame), zmq_msg_size(&frame), out);
    zmq_msg_close(&frame);
    return rc;
}
