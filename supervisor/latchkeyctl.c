/* latchkeyctl: the operator CLI. Sends one command to latchkeyd's control socket and
 * prints the answer.
 *
 *   latchkeyctl [-c FILE] status | stop | restart ROLE | scale ROLE N
 *                         | user disable EMAIL | user enable EMAIL | top [-n N]
 *
 *   status      one line per process: role, slot, pid, state, uptime, restarts, jobs done,
 *               busy (docs/operations.md)
 *   restart     every process of ROLE (also brings a failed role back; "postgres" when the
 *               embedded one is marked failed)
 *   scale       signup or signin to N processes (0..64); nothing else restarts
 *   user        disable EMAIL: the user can no longer sign in and every session of it
 *               ends at once (Postgres and the cache); enable EMAIL undoes the first part
 *   top         a live view from the gateway's /metrics, refreshed every second: requests/s,
 *               p50 and p99 by route, auth attempts, workers busy, queue depth, restarts
 *               (q or Ctrl-C quits; plain frames when stdout is not a terminal; -n N frames)
 *
 * Exit status: 0 done, 1 refused by latchkeyd, 2 usage, 3 no answer within 5 s.
 */
#include "codec.h"
#include "config.h"
#include "top.h"
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
    while ((opt = getopt(argc, argv, "+c:h")) != -1) {
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
    if (strcmp(argv[optind], "top") == 0)
        return lk_top(&cfg, argc - optind, argv + optind);
    struct lk_msg m;
    memset(&m, 0, sizeof m);
    m.type = MSG_CT_COMMAND_REQUEST;
    struct lk_msg_ct_command_request *c = &m.u.ct_command_request;
    if (strcmp(argv[optind], "user") == 0) {
        /* "user disable EMAIL" travels as command "user-disable", arg EMAIL */
        if (optind + 3 != argc ||
            (strcmp(argv[optind + 1], "disable") != 0 && strcmp(argv[optind + 1], "enable") != 0))
            goto usage;
        snprintf(c->command, sizeof c->command, "user-%s", argv[optind + 1]);
        if (lk_strlcpy(c->arg, argv[optind + 2], sizeof c->arg) != 0)
            goto usage;
    } else if (lk_strlcpy(c->command, argv[optind], sizeof c->command) != 0)
        goto usage;
    else if (optind + 1 < argc && lk_strlcpy(c->arg, argv[optind + 1], sizeof c->arg) != 0)
        goto usage;
    if (strncmp(c->command, "user-", 5) != 0 && optind + 2 < argc) {
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
    fprintf(stderr, "usage: latchkeyctl [-c FILE] status | stop | restart ROLE | scale ROLE N"
                    " | user disable|enable EMAIL | top [-n N]\n");
    return 2;
}
