/* top.h: `latchkeyctl top`, a live view of the deployment from the gateway's GET /metrics. */
#ifndef LK_TOP_H
#define LK_TOP_H

#include "config.h"

/* Runs the view against cfg->gateway.listen: one frame a second with requests/s by route,
 * p50 and p99 (from request_duration_seconds over the last interval), auth attempts by
 * result, workers connected/busy and queue depth by role, restarts. argv[0] is "top";
 * "-n N" stops after N frames. On a terminal the screen is redrawn and q or Ctrl-C quits
 * (the terminal is restored); otherwise plain frames are printed one after another.
 * Returns the process exit status: 0, 2 usage, 3 when /metrics cannot be read. */
int lk_top(const struct lk_config *cfg, int argc, char **argv);

#endif
