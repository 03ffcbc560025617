/* latchkeyctl: the operator CLI. Sends one command to latchkeyd's control socket and
 * prints the answer.
 *
 *   latchkeyctl [-c FILE] status | stop | restart ROLE | scale ROLE N
 *
 *   status      one line per process: role, slot, pid, state, uptime, restarts, jobs done,
 *               busy (docs/operations.md)
 *   restart     every process of ROLE (also brings a failed role back; "postgres" when the
 *               embedded one is marked failed)
 *   scale       signup or signin to N processes (0..64); nothing else restarts
 *
 * Exit status: 0 done, 1 refused by latchkeyd, 2 usage, 3 no answer within 5 s.
 */
#include "codec.h"
#include "config.h"
#include "util.h"
#include "zmqutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

int main(int argc, char **argv)
{
    const char *cfg_file = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "c:h")) != -1) {
        if (opt == 'c')
            cfg_file = optarg;
        else
            goto usage;
    }
    if (optind >= argc)
        goto usage;
    struct lk_config cfg;
    char err[512];
    if (lk_config_load(&cfg, cfg_file, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    struct lk_msg m;
    memset(&m, 0, sizeof m);
    m.type = MSG_CT_COMMAND_REQUEST;
    struct lk_msg_ct_command_request *c = &m.u.ct_command_request;
    if (lk_strlcpy(c->command, argv[optind], sizeof c->command) != 0)
        goto usage;
    if (optind + 1 < argc && lk_strlcpy(c->arg, argv[optind + 1], sizeof c->arg) != 0)
        goto usage;
    if (optind + 2 < argc) {
        char *end;
        long n = strtol(argv[optind + 2], &end, 10);
        if (*end || n < 0 || n > 1000)
            goto usage;
        c->n = (uint32_t)n;
    }

    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_REQ);
    int rc = 3;
    if (lk_zmq_set_defaults(sock) != 0 || zmq_connect(sock, cfg.supervisor.control) != 0 ||
        lk_zmq_send_msg(sock, NULL, 0, &m, 0) != 0) {
        fprintf(stderr, "latchkeyctl: cannot reach latchkeyd at %s\n", cfg.supervisor.control);
        goto out;
    }
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    struct lk_msg reply;
    if (zmq_poll(&item, 1, 5000) != 1 || lk_zmq_recv_msg(sock, NULL, NULL, &reply, 0) != 0 ||
        reply.type != MSG_SV_COMMAND_REPLY) {
        fprintf(stderr, "latchkeyctl: no answer from latchkeyd at %s (is it running?)\n",
                cfg.supervisor.control);
        goto out;
    }
    fputs(reply.u.sv_command_reply.text, reply.u.sv_command_reply.status ? stderr : stdout);
    rc = reply.u.sv_command_reply.status ? 1 : 0;
out:
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return rc;
usage:
    fprintf(stderr, "usage: latchkeyctl [-c FILE] status | stop | restart ROLE | scale ROLE N\n");
    return 2;
}
