/* ngcore.c -- status strings and the ABI stamp; see ngcore.h. */
#include "ngcore.h"

int ng_abi_version(void) { return NG_ABI_VERSION; }

const char *ng_strerror(int code) {
    switch (code) {
    case NG_OK: return "ok";
    case NG_EINVAL: return "invalid argument";
    case NG_ENOMEM: return "out of memory";
    case NG_EFULL: return "table full";
    case NG_ECORRUPT: return "stored bytes are corrupt";
    case NG_ENOTFOUND: return "not found";
    case NG_ERANGE: return "out of range";
    default: return "unknown status";
    }
}
