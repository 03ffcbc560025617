/* roles.h: the process graph of a latchkey host, declared once.
 *
 * One row per role: its binary, how many run, and the endpoints it binds or connects.
 * latchkeyd starts roles in table order and stops them in reverse; latchkeyctl status
 * and docs/architecture.md describe the same table.
 */
#ifndef LK_ROLES_H
#define LK_ROLES_H

#include "config.h"

struct lk_role {
    const char *name;     /* "gateway" */
    const char *binary;   /* "latchkey-gateway", next to latchkeyd */
    int scalable;         /* latchkeyctl scale may change the count */
    int (*count)(const struct lk_config *cfg);
    const char *peers;    /* sockets, for status and docs */
};

extern const struct lk_role lk_roles[];
extern const int lk_nroles;

/* Returns the row of a role name, or NULL. */
const struct lk_role *lk_role_find(const char *name);

#endif
