/* graph.c -- breadth-first walks over LMDB's pages; see graph.h for the page layout.
 *
 * The walk keeps the ids reached in an open-addressing hash set and in a queue (which is
 * also the answer: ids in the order reached, with their depth). Each level's frontier is
 * sorted before it is expanded, so consecutive prefix scans land in the same or the next
 * leaf pages of the B-tree. A scan is a descent from the root (binary search per page,
 * keys compared as LMDB does by default: memcmp, then the shorter key first) and a walk
 * along the leaves with an explicit stack (LMDB pages have no sibling links).
 */
#include "graph.h"

#include <stdlib.h>
#include <string.h>

#include "ngcore.h"

#define BT_MAX_DEPTH 32
#define BT_HDR 16
#define P_BRANCH 0x01u
#define P_LEAF 0x02u
#define P_REFUSED 0x7Cu /* overflow, meta, dirty, leaf2, sub-page: never a tree page on disk */
#define F_BIGDATA 0x01u
#define CONN_KEY 9
#define NO_ROOT ((uint64_t)-1)

typedef struct {
    const uint8_t *map;
    uint64_t npages;
    unsigned psize;
} bt_env;

typedef struct {
    const uint8_t *page;
    unsigned n, i, leaf;
} bt_level;

typedef struct {
    const bt_env *env;
    uint64_t root;
    bt_level st[BT_MAX_DEPTH];
    int depth; /* levels on the stack; 0: no position */
} bt_cursor;

static inline unsigned u16at(const uint8_t *p) { return (unsigned)p[0] | ((unsigned)p[1] << 8); }

static inline uint64_t u64at(const uint8_t *p) {
    uint64_t v = 0;
    for (int b = 7; b >= 0; b--) v = (v << 8) | p[b];
    return v;
}

static int bt_page(const bt_env *e, uint64_t pgno, bt_level *lv) {
    if (pgno >= e->npages) return NG_ECORRUPT;
    const uint8_t *p = e->map + pgno * (uint64_t)e->psize;
    unsigned f = u16at(p + 10), lower = u16at(p + 12), upper = u16at(p + 14);
    if ((f & P_REFUSED) || ((f & P_BRANCH) != 0) == ((f & P_LEAF) != 0)) return NG_ECORRUPT;
    if (lower < BT_HDR || (lower & 1u) || lower > upper || upper > e->psize) return NG_ECORRUPT;
    lv->page = p;
    lv->n = (lower - BT_HDR) / 2;
    lv->i = 0;
    lv->leaf = (f & P_LEAF) != 0;
    return NG_OK;
}

/* Node i of a page: its start and key size, checked to lie inside the page. */
static int bt_node(const bt_env *e, const bt_level *lv, unsigned i, const uint8_t **node, unsigned *ksize) {
    unsigned off = u16at(lv->page + BT_HDR + 2 * i);
    if (off < u16at(lv->page + 14) || off + 8u > e->psize) return NG_ECORRUPT;
    unsigned ks = u16at(lv->page + off + 6);
    if (off + 8u + ks > e->psize) return NG_ECORRUPT;
    *node = lv->page + off;
    *ksize = ks;
    return NG_OK;
}

static int key_cmp(const uint8_t *a, unsigned alen, const uint8_t *b, unsigned blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

static inline uint64_t branch_child(const uint8_t *node) {
    return (uint64_t)u16at(node) | ((uint64_t)u16at(node + 2) << 16) | ((uint64_t)u16at(node + 4) << 32);
}

/* Descends from the top of the stack to the leftmost leaf below it. */
static int bt_leftmost(bt_cursor *c) {
    while (!c->st[c->depth - 1].leaf) {
        const uint8_t *node;
        unsigned ks;
        bt_level *top = &c->st[c->depth - 1];
        int rc = bt_node(c->env, top, top->i, &node, &ks);
        if (rc != NG_OK) return rc;
        if (c->depth >= BT_MAX_DEPTH) return NG_ECORRUPT;
        rc = bt_page(c->env, branch_child(node), &c->st[c->depth]);
        if (rc != NG_OK) return rc;
        if (c->st[c->depth].n == 0) return NG_ECORRUPT;
        c->depth++;
    }
    return NG_OK;
}

/* Moves past the current leaf entry; c->depth = 0 at the end of the tree. */
static int bt_next(bt_cursor *c) {
    c->st[c->depth - 1].i++;
    while (c->depth > 0 && c->st[c->depth - 1].i >= c->st[c->depth - 1].n) {
        c->depth--;
        if (c->depth > 0) c->st[c->depth - 1].i++;
    }
    return c->depth > 0 ? bt_leftmost(c) : NG_OK;
}

/* Positions c on the first entry >= key (c->depth = 0 if there is none). */
static int bt_seek(bt_cursor *c, const uint8_t *key, unsigned klen) {
    c->depth = 0;
    if (c->root == NO_ROOT) return NG_OK;
    int rc = bt_page(c->env, c->root, &c->st[0]);
    if (rc != NG_OK) return rc;
    c->depth = 1;
    for (;;) {
        bt_level *lv = &c->st[c->depth - 1];
        const uint8_t *node;
        unsigned ks;
        if (!lv->leaf) {
            if (lv->n == 0) return NG_ECORRUPT;
            unsigned lo = 1, hi = lv->n; /* the last node whose key <= key (node 0: -inf) */
            while (lo < hi) {
                unsigned mid = lo + (hi - lo) / 2;
                if ((rc = bt_node(c->env, lv, mid, &node, &ks)) != NG_OK) return rc;
                if (key_cmp(node + 8, ks, key, klen) <= 0) lo = mid + 1; else hi = mid;
            }
            lv->i = lo - 1;
            if ((rc = bt_node(c->env, lv, lv->i, &node, &ks)) != NG_OK) return rc;
            if (c->depth >= BT_MAX_DEPTH) return NG_ECORRUPT;
            if ((rc = bt_page(c->env, branch_child(node), &c->st[c->depth])) != NG_OK) return rc;
            c->depth++;
            continue;
        }
        unsigned lo = 0, hi = lv->n; /* the first node whose key >= key */
        while (lo < hi) {
            unsigned mid = lo + (hi - lo) / 2;
            if ((rc = bt_node(c->env, lv, mid, &node, &ks)) != NG_OK) return rc;
            if (key_cmp(node + 8, ks, key, klen) < 0) lo = mid + 1; else hi = mid;
        }
        lv->i = lo;
        if (lo < lv->n) return NG_OK;
        if (lv->n == 0) { /* only an empty root leaf */
            c->depth = 0;
            return NG_OK;
        }
        lv->i = lo - 1;
        return bt_next(c);
    }
}

/* bt_seek for keys that ascend from call to call (a sorted frontier): when the key lies
 * in the leaf the cursor is on, a binary search of that leaf replaces the descent. */
static int bt_seek_forward(bt_cursor *c, const uint8_t *key, unsigned klen) {
    if (c->depth > 0) {
        bt_level *lv = &c->st[c->depth - 1];
        const uint8_t *node;
        unsigned ks;
        int rc = bt_node(c->env, lv, lv->n - 1, &node, &ks);
        if (rc != NG_OK) return rc;
        if (key_cmp(node + 8, ks, key, klen) >= 0) {
            if ((rc = bt_node(c->env, lv, lv->i, &node, &ks)) != NG_OK) return rc;
            if (key_cmp(node + 8, ks, key, klen) <= 0) { /* key in [current, last]: stay here */
                unsigned lo = lv->i, hi = lv->n - 1;
                while (lo < hi) {
                    unsigned mid = lo + (hi - lo) / 2;
                    if ((rc = bt_node(c->env, lv, mid, &node, &ks)) != NG_OK) return rc;
                    if (key_cmp(node + 8, ks, key, klen) < 0) lo = mid + 1; else hi = mid;
                }
                lv->i = lo;
                return NG_OK;
            }
        }
    }
    return bt_seek(c, key, klen);
}

/* The current entry's key (CONN_KEY bytes, else NG_ECORRUPT) and data. */
static int bt_entry(const bt_cursor *c, const uint8_t **key, const uint8_t **data, uint64_t *dlen) {
    const bt_level *lv = &c->st[c->depth - 1];
    const uint8_t *node;
    unsigned ks;
    int rc = bt_node(c->env, lv, lv->i, &node, &ks);
    if (rc != NG_OK) return rc;
    if (ks != CONN_KEY) return NG_ECORRUPT;
    const uint64_t size = (uint64_t)u16at(node) | ((uint64_t)u16at(node + 2) << 16);
    const uint64_t off = (uint64_t)(node - lv->page) + 8 + ks;
    *key = node + 8;
    if (u16at(node + 4) & F_BIGDATA) {
        if (off + 8 > c->env->psize) return NG_ECORRUPT;
        uint64_t pg = u64at(node + 8 + ks);
        if (pg >= c->env->npages || size > (c->env->npages - pg) * c->env->psize - BT_HDR) return NG_ECORRUPT;
        *data = c->env->map + pg * c->env->psize + BT_HDR;
    } else {
        if (off + size > c->env->psize) return NG_ECORRUPT;
        *data = node + 8 + ks;
    }
    *dlen = size;
    return NG_OK;
}

/* ---- the set of ids reached -------------------------------------------------------- */

typedef struct {
    uint64_t *slot; /* 0: empty, else id + 1 */
    size_t mask, count;
} id_set;

static int set_init(id_set *s, size_t want) {
    size_t cap = 64;
    while (cap < 2 * want) cap <<= 1;
    s->slot = (uint64_t *)calloc(cap, sizeof(uint64_t));
    s->mask = cap - 1;
    s->count = 0;
    return s->slot ? NG_OK : NG_ENOMEM;
}

static inline size_t set_home(const id_set *s, uint32_t id) {
    return (size_t)(((uint64_t)id * 0x9E3779B97F4A7C15ull) >> 20) & s->mask;
}

/* 1 if id was added, 0 if it was there, NG_ENOMEM. */
static int set_add(id_set *s, uint32_t id) {
    if (2 * (s->count + 1) > s->mask + 1) {
        id_set bigger;
        if (set_init(&bigger, 2 * (s->mask + 1)) != NG_OK) return NG_ENOMEM;
        for (size_t j = 0; j <= s->mask; j++) {
            if (!s->slot[j]) continue;
            size_t h = set_home(&bigger, (uint32_t)(s->slot[j] - 1));
            while (bigger.slot[h]) h = (h + 1) & bigger.mask;
            bigger.slot[h] = s->slot[j];
        }
        bigger.count = s->count;
        free(s->slot);
        *s = bigger;
    }
    size_t h = set_home(s, id);
    while (s->slot[h]) {
        if (s->slot[h] == (uint64_t)id + 1) return 0;
        h = (h + 1) & s->mask;
    }
    s->slot[h] = (uint64_t)id + 1;
    s->count++;
    return 1;
}

/* ---- the walk ------------------------------------------------------------------------ */

typedef struct {
    uint32_t *id;
    uint32_t *depth;
    size_t n, cap;
} queue;

static int queue_push(queue *q, uint32_t id, uint32_t depth) {
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 1024;
        uint32_t *a = (uint32_t *)realloc(q->id, cap * sizeof(uint32_t));
        if (!a) return NG_ENOMEM;
        q->id = a;
        uint32_t *b = (uint32_t *)realloc(q->depth, cap * sizeof(uint32_t));
        if (!b) return NG_ENOMEM;
        q->depth = b;
        q->cap = cap;
    }
    q->id[q->n] = id;
    q->depth[q->n] = depth;
    q->n++;
    return NG_OK;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static int strong_enough(const uint8_t *data, uint64_t dlen, double min_strength) {
    if (dlen < 20) return -1;
    float s;
    memcpy(&s, data + 16, 4);
    return (double)s >= min_strength;
}

typedef struct {
    bt_cursor fwd, rev, look;
    unsigned direction;
    const uint8_t *type_mask;
    int use_min;
    double min_strength;
    id_set seen;
    queue q;
} walk;

/* Expands one node: adds its unseen neighbours at depth d. */
static int expand(walk *w, uint32_t node, uint32_t d) {
    uint8_t prefix[4];
    put_be32(prefix, node);
    for (unsigned side = 0; side < 2; side++) {
        if (!(w->direction & (side ? NG_WALK_IN : NG_WALK_OUT))) continue;
        bt_cursor *c = side ? &w->rev : &w->fwd;
        int rc = bt_seek_forward(c, prefix, 4);
        while (rc == NG_OK && c->depth > 0) {
            const uint8_t *key, *data;
            uint64_t dlen;
            if ((rc = bt_entry(c, &key, &data, &dlen)) != NG_OK) return rc;
            if (memcmp(key, prefix, 4) != 0) break;
            const uint32_t other = be32(key + 4);
            const unsigned t = key[8];
            int keep = (w->type_mask[t >> 3] >> (t & 7u)) & 1u;
            if (keep && side && other == node && (w->direction & NG_WALK_OUT)) keep = 0; /* met forward */
            if (keep && w->use_min) {
                if (side) { /* the record lives under the forward key other | node | type */
                    uint8_t fk[CONN_KEY];
                    put_be32(fk, other);
                    put_be32(fk + 4, node);
                    fk[8] = (uint8_t)t;
                    const uint8_t *k2;
                    keep = 0;
                    if ((rc = bt_seek(&w->look, fk, CONN_KEY)) != NG_OK) return rc;
                    if (w->look.depth > 0) {
                        if ((rc = bt_entry(&w->look, &k2, &data, &dlen)) != NG_OK) return rc;
                        if (memcmp(k2, fk, CONN_KEY) == 0) {
                            int s = strong_enough(data, dlen, w->min_strength);
                            if (s < 0) return NG_ECORRUPT;
                            keep = s;
                        }
                    }
                } else {
                    int s = strong_enough(data, dlen, w->min_strength);
                    if (s < 0) return NG_ECORRUPT;
                    keep = s;
                }
            }
            if (keep) {
                int added = set_add(&w->seen, other);
                if (added < 0) return added;
                if (added && (rc = queue_push(&w->q, other, d)) != NG_OK) return rc;
            }
            rc = bt_next(c);
        }
        if (rc != NG_OK) return rc;
    }
    return NG_OK;
}

int ng_graph_walk(const uint8_t *map, uint64_t map_len, unsigned psize, uint64_t fwd_root,
                  uint64_t rev_root, const uint32_t *seeds, size_t nseeds, unsigned k,
                  unsigned direction, const uint8_t type_mask[32], int use_min, double min_strength,
                  uint32_t *out_ids, uint32_t *out_depth, size_t cap, size_t *n_out) {
    if (!map || !type_mask || !n_out || (nseeds && !seeds) || (cap && (!out_ids || !out_depth))) return NG_EINVAL;
    if (psize < 512 || psize > 65536 || (psize & (psize - 1)) || !direction || (direction & ~3u)) return NG_EINVAL;
    if (use_min && min_strength != min_strength) return NG_EINVAL;
    bt_env env = {map, map_len / psize, psize};
    walk w;
    memset(&w, 0, sizeof w);
    w.fwd.env = w.rev.env = w.look.env = &env;
    w.fwd.root = w.look.root = fwd_root;
    w.rev.root = rev_root;
    w.direction = direction;
    w.type_mask = type_mask;
    w.use_min = use_min;
    w.min_strength = min_strength;
    int rc = set_init(&w.seen, nseeds + 1024);
    for (size_t i = 0; rc == NG_OK && i < nseeds; i++) {
        int added = set_add(&w.seen, seeds[i]);
        if (added < 0) rc = added;
        else if (added) rc = queue_push(&w.q, seeds[i], 0);
    }
    size_t start = 0;
    for (unsigned d = 1; rc == NG_OK && d <= k; d++) {
        const size_t end = w.q.n;
        if (start == end) break;
        qsort(w.q.id + start, end - start, sizeof(uint32_t), cmp_u32); /* one depth: ids alone */
        for (size_t i = start; rc == NG_OK && i < end; i++) rc = expand(&w, w.q.id[i], d);
        start = end;
    }
    if (rc == NG_OK) {
        size_t m = w.q.n < cap ? w.q.n : cap;
        if (m) {
            memcpy(out_ids, w.q.id, m * sizeof(uint32_t));
            memcpy(out_depth, w.q.depth, m * sizeof(uint32_t));
        }
        *n_out = w.q.n;
        if (w.q.n > cap) rc = NG_ERANGE;
    }
    free(w.seen.slot);
    free(w.q.id);
    free(w.q.depth);
    return rc;
}
