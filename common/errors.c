#include "errors.h"

#include <string.h>

const char *lk_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case LK_EMALFORMED: return "malformed input";
    case LK_ETOOBIG: return "input exceeds a limit";
    case LK_ECONFIG: return "configuration error";
    case LK_ENOTFOUND: return "not found";
    case LK_EEXISTS: return "already exists";
    case LK_EDB: return "database error";
    case LK_ECACHE: return "session cache error";
    case LK_ECRYPTO: return "crypto error";
    case LK_EVERSION: return "protocol version mismatch";
    case LK_EEXPIRED: return "expired";
    case LK_EINVAL: return "invalid value";
    case LK_ELIMITED: return "throttled";
    default: break;
    }
    if (code < 0 && code > LK_EBASE)
        return strerror(-code);
    return "unknown error";
}
