#include "roles.h"

#include <string.h>

static int s_one(const struct lk_config *cfg)
{
    (void)cfg;
    return 1;
}

static int s_gateways(const struct lk_config *cfg)
{
    return cfg->gateway.count;
}

static int s_signups(const struct lk_config *cfg)
{
    return cfg->signup.count;
}

static int s_signins(const struct lk_config *cfg)
{
    return cfg->signin.count;
}

/* Start order: the collector first (everyone pushes to it), then the gateways (the brokers
 * workers connect to), then the workers, then the sweeper. Postgres, embedded or not, is
 * up before any of them. Every child also pushes MSG_RO_STATUS to latchkeyd's status
 * socket (<var>/run/status.ipc). */
const struct lk_role lk_roles[] = {
    {"metrics", "latchkey-metrics", 0, s_one,
     "PULL bind metrics.endpoint; ROUTER bind metrics.query_endpoint"},
    {"gateway", "latchkey-gateway", 0, s_gateways,
     "HTTP gateway.listen (SO_REUSEPORT); ROUTER bind its own backend (gateway.backend, "
     "tcp port + index or backend-index.ipc); cache read-only"},
    {"signup", "latchkey-signup", 1, s_signups,
     "one DEALER per gateway, connect to each backend; Postgres"},
    {"signin", "latchkey-signin", 1, s_signins,
     "one DEALER per gateway, connect to each backend; Postgres; cache read-write"},
    {"sweeper", "latchkey-sweeper", 0, s_one, "Postgres; cache read-write"},
};
const int lk_nroles = (int)(sizeof lk_roles / sizeof lk_roles[0]);

const struct lk_role *lk_role_find(const char *name)
{
    for (int i = 0; i < lk_nroles; i++)
        if (strcmp(lk_roles[i].name, name) == 0)
            return &lk_roles[i];
    return NULL;
}
