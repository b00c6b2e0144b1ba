/* crisp-monitor: the idle half of crisp's shim, in C.
 *
 * crisp's Python shim (shim/main.py, shim/server.py) creates and starts a container; then it execs this program,
 * which keeps the shim's pid, its control socket and its protocol (shim/protocol.py) and watches the container
 * from there on: its output to the CRI log and to attachers, its exit (status.json, waiters, OOM kills), state,
 * wait, kill, attach, resize, reopen_log and shutdown. What needs Python (exec, update, kill --all, the executor's
 * delete) is done by a delegate: a process forked by crispd's zygote, which gets the request and a connection to
 * answer on over a unix socket (SCM_RIGHTS). The semantics are the Python shim's; its code is the reference.
 *
 * Start-up: execve(this, ["crisp-shim", <container id>, <state fd>]) by the Python shim, already the container's
 * subreaper, in its own session, cwd the bundle, stderr shim.log, the init its child. The state fd (a memfd, or a
 * pipe whose write end is closed) holds one JSON object, every key present:
 *   config: {id, bundle, log_path, log_max_line, stdin, stdin_once, cgroup2_mount, cgroup, zygote_socket,
 *            hang_points, ...others ignored}
 *   listener (shim.sock, listening), log_fd (-1 without a log), outputs [{fd, stream 1|2}], stdin_fd (-1: none),
 *   master (the pty master, -1: none), state "running"|"stopped", pid, started_at (ns), status (null | the
 *   ExitStatus object), oom {cgroup_dir, before, parent_before}, rootfs_mounted,
 *   conns [{fd, mode "idle"|"wait"|"attach", stdin, streams}]: the Python shim's open connections ("wait": a wait
 *   request is pending; "attach": framed, an attach session with these flags). A connection is handed over with
 *   no bytes read and unprocessed: the state has no place for them.
 * A bad state: a line in shim.log, exit 1.
 *
 * Delegation: a connection to config.zygote_socket carries one line,
 *   {"work":"shim_op","bundle":..,"state":{"state","pid","started_at","rootfs_mounted"},"op":<the request>}\n
 * and one fd (SCM_RIGHTS) in the same sendmsg, then is closed: for exec, the client's own connection (the monitor
 * keeps no copy); for update, kill --all, and the internal kill --all and delete of a shutdown, one end of a
 * socketpair on which the delegate writes its one reply line (relayed to the client as it is).
 *
 * One thread, epoll, non-blocking fds; SIGCHLD through a signalfd. gnu11, glibc only. Built by
 * scripts/build-monitor. Tests: tests/integration/monitor.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef CRISP_VERSION
#define CRISP_VERSION "monitor"
#endif

/* shim/protocol.py */
#define PROTOCOL_VERSION 1
#define SOCKET_NAME "shim.sock"
#define INFO_NAME "shim.json"
#define STATUS_NAME "status.json"
#define INIT_PID_NAME "init.pid" /* shim/container.py */
#define STREAM_STDIN 0
#define STREAM_STDOUT 1
#define STREAM_STDERR 2
#define STREAM_RESIZE 3
#define STREAM_EXIT 4
#define FRAME_HEADER 5
#define MAX_FRAME (1u << 20)
#define MAX_ATTACH_BACKLOG (4u << 20)
/* shim/io/streams.py, shim/io/output.py */
#define RECV_SIZE 65536
#define READ_SIZE (1 << 17)
#define READS_PER_WAKEUP 16
#define SINK_HIGH (1u << 20)
/* shim/server.py */
#define FLUSH_GRACE_NS 2000000000LL
#define PY_NSIG 65 /* Python's signal.NSIG on Linux */
#define MAX_DEPTH 256
#define TRIM_AFTER_MS 1000 /* idle this long after a burst of I/O: give the scratch memory back */

/* ------------------------------------------------------------------------------------------------------------ */
/* memory and byte buffers                                                                                      */

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        static const char msg[] = "crisp-monitor: out of memory\n";
        ssize_t ignored = write(2, msg, sizeof msg - 1);
        (void)ignored;
        abort();
    }
    return q;
}

static void *xcalloc(size_t n)
{
    void *p = xrealloc(NULL, n);
    memset(p, 0, n);
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xrealloc(NULL, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

typedef struct {
    char *p;
    size_t off, len, cap; /* data is p[off, len) */
} Buf;

static size_t buf_size(const Buf *b) { return b->len - b->off; }
static char *buf_data(const Buf *b) { return b->p + b->off; }

static void buf_free(Buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void buf_reserve(Buf *b, size_t extra)
{
    if (b->off && (b->len + extra > b->cap || b->off >= b->cap / 2)) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + extra > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + extra)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}

static void buf_add(Buf *b, const void *data, size_t n)
{
    if (!n)
        return;
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_adds(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_addc(Buf *b, char c) { buf_add(b, &c, 1); }

__attribute__((format(printf, 2, 3))) static void buf_addf(Buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* drop n bytes from the front; an emptied big buffer gives its memory back (the PSS budget) */
static void buf_consume(Buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) {
        b->off = b->len = 0;
        if (b->cap > 65536)
            buf_free(b);
    }
}

/* a NUL-terminated copy of the contents (for messages) */
static char *buf_cstr(Buf *b)
{
    buf_reserve(b, 1);
    b->p[b->len] = 0;
    return buf_data(b);
}

/* ------------------------------------------------------------------------------------------------------------ */
/* shim.log (shim/log.py): "<UTC time> crisp-shim[<pid>]: <message>\n" on stderr                               */

__attribute__((format(printf, 1, 2))) static void logmsg(const char *fmt, ...)
{
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    Buf b = {0};
    buf_addf(&b, "%s crisp-shim[%d]: ", when, (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n > 0) {
        buf_reserve(&b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b.p + b.len, (size_t)n + 1, fmt, ap);
        va_end(ap);
        b.len += (size_t)n;
    }
    buf_addc(&b, '\n');
    size_t done = 0;
    while (done < b.len) {
        ssize_t w = write(2, b.p + done, b.len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    buf_free(&b);
}

static long long now_ns(int clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* JSON: a small DOM parser (the requests, the state) and writers that produce what Python's json.dumps does    */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct JVal {
    int t;
    char *s; /* J_STR: the decoded bytes (UTF-8); J_NUM: the number's text */
    size_t n;
    bool isint; /* J_NUM: an integer that fits in i */
    long long i;
    double d;
    struct JVal **v; /* J_ARR items, J_OBJ values */
    char **k;        /* J_OBJ keys */
    size_t *kn;
    size_t cnt;
} JVal;

static void jfree(JVal *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->cnt; i++) {
        jfree(v->v[i]);
        if (v->k)
            free(v->k[i]);
    }
    free(v->v);
    free(v->k);
    free(v->kn);
    free(v->s);
    free(v);
}

typedef struct {
    const char *start, *p, *end;
    int depth;
    char err[200];
} JParser;

static bool jfail(JParser *jp, const char *what, const char *at)
{
    if (!jp->err[0]) {
        long pos = (long)(at - jp->start);
        snprintf(jp->err, sizeof jp->err, "%s: line 1 column %ld (char %ld)", what, pos + 1, pos);
    }
    return false;
}

static void jws(JParser *jp)
{
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
        jp->p++;
}

static void utf8_put(Buf *b, unsigned cp)
{
    char c[4];
    if (cp < 0x80) {
        buf_addc(b, (char)cp);
    } else if (cp < 0x800) {
        c[0] = (char)(0xc0 | (cp >> 6));
        c[1] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, c, 2);
    } else if (cp < 0x10000) {
        c[0] = (char)(0xe0 | (cp >> 12));
        c[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        c[2] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, c, 3);
    } else {
        c[0] = (char)(0xf0 | (cp >> 18));
        c[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        c[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        c[3] = (char)(0x80 | (cp & 0x3f));
        buf_add(b, c, 4);
    }
}

static int hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

/* the string at jp->p (an opening quote); its decoded bytes in out */
static bool jstring(JParser *jp, Buf *out)
{
    const char *begin = jp->p++;
    for (;;) {
        if (jp->p >= jp->end)
            return jfail(jp, "Unterminated string starting at", begin);
        unsigned char c = (unsigned char)*jp->p;
        if (c == '"') {
            jp->p++;
            return true;
        }
        if (c < 0x20)
            return jfail(jp, "Invalid control character at", jp->p);
        if (c != '\\') {
            buf_addc(out, (char)c);
            jp->p++;
            continue;
        }
        if (jp->p + 1 >= jp->end)
            return jfail(jp, "Unterminated string starting at", begin);
        char e = jp->p[1];
        const char *esc = jp->p;
        jp->p += 2;
        switch (e) {
        case '"': buf_addc(out, '"'); break;
        case '\\': buf_addc(out, '\\'); break;
        case '/': buf_addc(out, '/'); break;
        case 'b': buf_addc(out, '\b'); break;
        case 'f': buf_addc(out, '\f'); break;
        case 'n': buf_addc(out, '\n'); break;
        case 'r': buf_addc(out, '\r'); break;
        case 't': buf_addc(out, '\t'); break;
        case 'u': {
            int cp = hex4(jp->p, jp->end);
            if (cp < 0)
                return jfail(jp, "Invalid \\uXXXX escape", esc + 1);
            jp->p += 4;
            if (cp >= 0xd800 && cp < 0xdc00 && jp->end - jp->p >= 6 && jp->p[0] == '\\' && jp->p[1] == 'u') {
                int lo = hex4(jp->p + 2, jp->end);
                if (lo >= 0xdc00 && lo < 0xe000) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    jp->p += 6;
                }
            }
            utf8_put(out, (unsigned)cp);
            break;
        }
        default:
            return jfail(jp, "Invalid \\escape", esc);
        }
    }
}

static JVal *jvalue(JParser *jp);

static bool jlit(JParser *jp, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(jp->end - jp->p) >= n && memcmp(jp->p, word, n) == 0) {
        jp->p += n;
        return true;
    }
    return false;
}

static JVal *jnumber(JParser *jp)
{
    const char *s = jp->p, *p = jp->p;
    bool isint = true;
    if (p < jp->end && *p == '-')
        p++;
    if (p < jp->end && *p == '0') {
        p++;
    } else if (p < jp->end && *p >= '1' && *p <= '9') {
        while (p < jp->end && *p >= '0' && *p <= '9')
            p++;
    } else {
        jfail(jp, "Expecting value", s);
        return NULL;
    }
    if (p + 1 < jp->end && *p == '.' && p[1] >= '0' && p[1] <= '9') {
        isint = false;
        p++;
        while (p < jp->end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < jp->end && (*p == 'e' || *p == 'E')) {
        const char *q = p + 1;
        if (q < jp->end && (*q == '+' || *q == '-'))
            q++;
        if (q < jp->end && *q >= '0' && *q <= '9') {
            isint = false;
            p = q;
            while (p < jp->end && *p >= '0' && *p <= '9')
                p++;
        }
    }
    JVal *v = xcalloc(sizeof *v);
    v->t = J_NUM;
    v->s = xstrndup(s, (size_t)(p - s));
    v->n = (size_t)(p - s);
    errno = 0;
    v->d = strtod(v->s, NULL);
    if (isint) {
        errno = 0;
        v->i = strtoll(v->s, NULL, 10);
        v->isint = errno == 0;
    }
    jp->p = p;
    return v;
}

static JVal *jvalue(JParser *jp)
{
    jws(jp);
    if (jp->p >= jp->end) {
        jfail(jp, "Expecting value", jp->p);
        return NULL;
    }
    char c = *jp->p;
    if (c == '"') {
        Buf b = {0};
        if (!jstring(jp, &b)) {
            buf_free(&b);
            return NULL;
        }
        JVal *v = xcalloc(sizeof *v);
        v->t = J_STR;
        v->n = buf_size(&b);
        v->s = xstrndup(buf_data(&b), v->n);
        buf_free(&b);
        return v;
    }
    if (c == '{' || c == '[') {
        if (++jp->depth > MAX_DEPTH) {
            jfail(jp, "too deeply nested", jp->p);
            return NULL;
        }
        bool obj = c == '{';
        char close = obj ? '}' : ']';
        JVal *v = xcalloc(sizeof *v);
        v->t = obj ? J_OBJ : J_ARR;
        size_t cap = 0;
        jp->p++;
        jws(jp);
        if (jp->p < jp->end && *jp->p == close) {
            jp->p++;
            jp->depth--;
            return v;
        }
        for (;;) {
            Buf key = {0};
            if (obj) {
                jws(jp);
                if (jp->p >= jp->end || *jp->p != '"') {
                    jfail(jp, "Expecting property name enclosed in double quotes", jp->p);
                    goto bad;
                }
                if (!jstring(jp, &key)) {
                    buf_free(&key);
                    goto bad;
                }
                jws(jp);
                if (jp->p >= jp->end || *jp->p != ':') {
                    buf_free(&key);
                    jfail(jp, "Expecting ':' delimiter", jp->p);
                    goto bad;
                }
                jp->p++;
            }
            JVal *item = jvalue(jp);
            if (!item) {
                buf_free(&key);
                goto bad;
            }
            if (v->cnt == cap) {
                cap = cap ? cap * 2 : 8;
                v->v = xrealloc(v->v, cap * sizeof *v->v);
                if (obj) {
                    v->k = xrealloc(v->k, cap * sizeof *v->k);
                    v->kn = xrealloc(v->kn, cap * sizeof *v->kn);
                }
            }
            if (obj) {
                v->kn[v->cnt] = buf_size(&key);
                v->k[v->cnt] = xstrndup(buf_data(&key), buf_size(&key));
                buf_free(&key);
            }
            v->v[v->cnt++] = item;
            jws(jp);
            if (jp->p < jp->end && *jp->p == close) {
                jp->p++;
                jp->depth--;
                return v;
            }
            if (jp->p >= jp->end || *jp->p != ',') {
                jfail(jp, "Expecting ',' delimiter", jp->p);
                goto bad;
            }
            jp->p++;
            if (obj) {
                jws(jp);
                if (jp->p >= jp->end || *jp->p != '"') {
                    jfail(jp, "Expecting property name enclosed in double quotes", jp->p);
                    goto bad;
                }
            }
        }
    bad:
        jfree(v);
        return NULL;
    }
    if (jlit(jp, "null")) {
        JVal *v = xcalloc(sizeof *v);
        v->t = J_NULL;
        return v;
    }
    if (jlit(jp, "true") || jlit(jp, "false")) {
        JVal *v = xcalloc(sizeof *v);
        v->t = jp->p[-1] == 'e' && jp->p[-2] == 'u' ? J_TRUE : J_FALSE;
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        /* Python's json takes NaN, Infinity and -Infinity too */
        const char *start = jp->p;
        bool minus = c == '-';
        if (minus)
            jp->p++;
        if ((!minus && jlit(jp, "NaN")) || jlit(jp, "Infinity")) {
            JVal *v = xcalloc(sizeof *v);
            v->t = J_NUM;
            v->n = (size_t)(jp->p - start);
            v->s = xstrndup(start, v->n);
            v->d = start[minus] == 'N' ? NAN : minus ? -INFINITY : INFINITY;
            return v;
        }
        jp->p = start;
        return jnumber(jp);
    }
    if (jlit(jp, "NaN") || jlit(jp, "Infinity")) {
        JVal *v = xcalloc(sizeof *v);
        v->t = J_NUM;
        v->s = xstrndup(jp->p[-1] == 'N' ? "NaN" : "Infinity", jp->p[-1] == 'N' ? 3 : 8);
        v->n = strlen(v->s);
        v->d = jp->p[-1] == 'N' ? NAN : INFINITY;
        return v;
    }
    jfail(jp, "Expecting value", jp->p);
    return NULL;
}

/* UTF-8 check, with the words of Python's decoder (json.loads of bytes decodes them first, "surrogatepass") */
static bool utf8_check(const unsigned char *s, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        /* how many continuation bytes, and the range of the first one (the others: 80..BF) */
        size_t need = 0;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0; /* ED A0..BF (surrogates) pass: the decoder's error handler takes them */
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        }
        const char *why = NULL;
        size_t bad = 1; /* the bytes the error names */
        if (!need) {
            why = "invalid start byte";
        } else {
            for (size_t j = 1; j <= need; j++) {
                if (i + j >= n) {
                    why = "unexpected end of data";
                    break;
                }
                unsigned b = s[i + j];
                if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xbf)) {
                    why = "invalid continuation byte";
                    break;
                }
                bad = j + 1;
            }
        }
        if (why) {
            if (bad == 1)
                snprintf(err, errlen, "'utf-8' codec can't decode byte 0x%02x in position %zu: %s", c, i, why);
            else
                snprintf(err, errlen, "'utf-8' codec can't decode bytes in position %zu-%zu: %s", i, i + bad - 1,
                         why);
            return false;
        }
        i += need + 1;
    }
    return true;
}

/* parse one JSON document; NULL with the reason in err (as Python's json.loads words it) */
static JVal *jparse(const char *s, size_t n, char *err, size_t errlen)
{
    if (!utf8_check((const unsigned char *)s, n, err, errlen))
        return NULL;
    JParser jp = {.start = s, .p = s, .end = s + n};
    JVal *v = jvalue(&jp);
    if (v) {
        jws(&jp);
        if (jp.p != jp.end) {
            jfail(&jp, "Extra data", jp.p);
            jfree(v);
            v = NULL;
        }
    }
    if (!v)
        snprintf(err, errlen, "%s", jp.err);
    return v;
}

static JVal *jget(const JVal *obj, const char *key)
{
    if (!obj || obj->t != J_OBJ)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = obj->cnt; i-- > 0;) /* the last of duplicate keys wins, as in a Python dict */
        if (obj->kn[i] == n && memcmp(obj->k[i], key, n) == 0)
            return obj->v[i];
    return NULL;
}

/* Python's truth value of the decoded JSON value */
static bool jtruthy(const JVal *v)
{
    if (!v)
        return false;
    switch (v->t) {
    case J_TRUE: return true;
    case J_NUM: return v->d != 0;
    case J_STR: return v->n > 0;
    case J_ARR:
    case J_OBJ: return v->cnt > 0;
    default: return false;
    }
}

/* isinstance(value, int) in Python (a bool is one) with the value */
static bool jpyint(const JVal *v, long long *out)
{
    if (!v)
        return false;
    if (v->t == J_TRUE || v->t == J_FALSE) {
        *out = v->t == J_TRUE;
        return true;
    }
    if (v->t == J_NUM && v->isint) {
        *out = v->i;
        return true;
    }
    return false;
}

/* the two-character escape json.dumps writes for c, or NULL */
static const char *json_escape(unsigned char c)
{
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default: return NULL;
    }
}

/* a JSON string as json.dumps writes it (ensure_ascii) */
static void json_str(Buf *b, const char *s, size_t n)
{
    buf_addc(b, '"');
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *escape = json_escape(c);
        if (escape) {
            buf_adds(b, escape);
            i++;
        } else if (c < 0x20 || c == 0x7f) { /* json.dumps escapes all but space to ~ */
            buf_addf(b, "\\u%04x", c);
            i++;
        } else if (c < 0x80) {
            buf_addc(b, (char)c);
            i++;
        } else {
            unsigned cp;
            size_t need;
            if (c >= 0xf0) {
                cp = c & 0x07;
                need = 3;
            } else if (c >= 0xe0) {
                cp = c & 0x0f;
                need = 2;
            } else {
                cp = c & 0x1f;
                need = 1;
            }
            if (i + need >= n) {
                /* truncated sequence: cannot come from our parser; write the replacement character */
                buf_adds(b, "\\ufffd");
                break;
            }
            for (size_t j = 1; j <= need; j++)
                cp = (cp << 6) | ((unsigned char)s[i + j] & 0x3f);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                buf_addf(b, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                buf_addf(b, "\\u%04x", cp);
            }
            i += need + 1;
        }
    }
    buf_addc(b, '"');
}

static void json_cstr(Buf *b, const char *s) { json_str(b, s, strlen(s)); }

/* repr() of the decoded value, as Python's error messages show it */
static void pyrepr(Buf *b, const JVal *v)
{
    if (!v) {
        buf_adds(b, "None");
        return;
    }
    switch (v->t) {
    case J_NULL: buf_adds(b, "None"); break;
    case J_TRUE: buf_adds(b, "True"); break;
    case J_FALSE: buf_adds(b, "False"); break;
    case J_NUM:
        if (v->s[strspn(v->s, "-0123456789")] == 0) { /* an int, of any size */
            buf_add(b, v->s, v->n);
        } else if (isnan(v->d)) {
            buf_adds(b, "nan");
        } else if (isinf(v->d)) {
            buf_adds(b, v->d < 0 ? "-inf" : "inf");
        } else {
            char tmp[40];
            for (int prec = 1; prec <= 17; prec++) {
                snprintf(tmp, sizeof tmp, "%.*g", prec, v->d);
                if (strtod(tmp, NULL) == v->d)
                    break;
            }
            buf_adds(b, tmp);
            if (!strpbrk(tmp, ".eni"))
                buf_adds(b, ".0");
        }
        break;
    case J_STR: {
        char q = memchr(v->s, '\'', v->n) && !memchr(v->s, '"', v->n) ? '"' : '\'';
        buf_addc(b, q);
        for (size_t i = 0; i < v->n; i++) {
            unsigned char c = (unsigned char)v->s[i];
            if (c == (unsigned char)q || c == '\\') {
                buf_addc(b, '\\');
                buf_addc(b, (char)c);
            } else if (c == '\n') {
                buf_adds(b, "\\n");
            } else if (c == '\r') {
                buf_adds(b, "\\r");
            } else if (c == '\t') {
                buf_adds(b, "\\t");
            } else if (c < 0x20 || c == 0x7f) {
                buf_addf(b, "\\x%02x", c);
            } else {
                buf_addc(b, (char)c);
            }
        }
        buf_addc(b, q);
        break;
    }
    case J_ARR:
        buf_addc(b, '[');
        for (size_t i = 0; i < v->cnt; i++) {
            if (i)
                buf_adds(b, ", ");
            pyrepr(b, v->v[i]);
        }
        buf_addc(b, ']');
        break;
    case J_OBJ:
        buf_addc(b, '{');
        for (size_t i = 0; i < v->cnt; i++) {
            if (i)
                buf_adds(b, ", ");
            JVal key = {.t = J_STR, .s = v->k[i], .n = v->kn[i]};
            pyrepr(b, &key);
            buf_adds(b, ": ");
            pyrepr(b, v->v[i]);
        }
        buf_addc(b, '}');
        break;
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the container and the shim's state                                                                           */

typedef struct {
    long long exit_code, signal, started_at, finished_at;
    bool oom_killed;
    char *reason, *message;
} Status;

static struct {
    char *id, *bundle, *log_path, *cgroup2_mount, *cgroup, *zygote_socket;
    long long log_max_line;
    bool stdin, stdin_once;
    char **hang_points;
    size_t n_hang;
} cfg;

static const char *cstate = "running"; /* "running" | "stopped" */
static int init_pid;
static long long started_at;
static Status status;
static bool has_status;
static char *oom_dir = "";
static long long oom_before, oom_parent_before;
static char *rootfs_mounted = "";
static int master = -1;

/* what epoll watches: every watched object starts with a Watch */
enum { K_LISTENER = 1, K_SIGNAL, K_OUTPUT, K_SINK, K_CONN, K_DELEG, K_CTL };
typedef struct {
    int kind;
    int fd;
    uint32_t events; /* what epoll has now; 0 = not registered */
} Watch;

static int epfd = -1;

static void watch_set(Watch *w, uint32_t events)
{
    if (w->fd < 0 || events == w->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    int op = w->events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(epfd, op, w->fd, &ev) < 0) {
        logmsg("epoll_ctl on fd %d failed: %s", w->fd, strerror(errno));
        return;
    }
    w->events = events;
}

/* a client of the control socket: JSON lines, then frames after an attach reply */
typedef struct Conn {
    Watch w;
    struct Conn *next;
    Buf rbuf, wbuf;
    bool framed, closed, close_after_flush;
    bool paused; /* reading paused while the container's stdin is backed up (it is an attacher with stdin) */
    int waits;     /* wait requests to answer when the container exits */
    int shutdowns; /* shutdown requests to answer when the delete is done (or failed) */
    bool attacher, att_stdin;
    unsigned att_streams; /* 1 << stream id */
} Conn;

static Conn *conns;

/* a delegate's connection (our end of a socketpair) for one op; its one reply line is the op's result */
enum { D_UPDATE, D_KILL_ALL, D_INT_KILL, D_INT_DELETE };
typedef struct Deleg {
    Watch w;
    struct Deleg *next;
    int op;
    Conn *client; /* who gets the reply (D_UPDATE, D_KILL_ALL); NULL once it is gone */
    Buf rbuf;
    bool closed;
} Deleg;

static Deleg *delegs;

/* an exec delegate's news channel (our end of a seqpacket pair): the terminals of its tty sessions, so that a
   `resize` naming an exec id is served here. Messages: {"op":"tty","exec_id":..} with the pty master (SCM_RIGHTS),
   {"op":"done","exec_id":..}; the delegate sends each before its caller can act on it (the exec id, the exit) */
typedef struct Ctl {
    Watch w;
    struct Ctl *next;
    bool closed;
} Ctl;

static Ctl *ctls;

typedef struct Tty {
    struct Tty *next;
    char *exec_id;
    int fd;
    Ctl *owner;
} Tty;

static Tty *ttys;

typedef struct {
    Watch w;
    int stream; /* STREAM_STDOUT | STREAM_STDERR */
    bool open;
} Output;

static Output outputs[4];
static int n_outputs;

/* the container's stdin (shim/io/streams.py Sink): buffered, closed once empty when asked to */
static struct {
    Watch w;
    Buf buf;
    bool active, close_when_empty;
} sink = {.w = {K_SINK, -1, 0}};
static bool have_stdin; /* Python's `container.stdin is not None` */

static Watch listener = {K_LISTENER, -1, 0};
static Watch sigw = {K_SIGNAL, -1, 0};
static int log_fd = -1;
static bool log_failed;

static int kills_in_flight;
static bool delete_after_kills, delete_after_exit, shutting_down;
static bool exiting;
static long long exit_deadline;

static void delete_and_exit(void);
static void finish_shutdown(void);
static bool finish_when_delegates_gone;

/* a fail point where crispd's [debug] hang_points stops the shim until it is killed (shim/server.py point) */
static void point(const char *name)
{
    for (size_t i = 0; i < cfg.n_hang; i++) {
        if (strcmp(cfg.hang_points[i], name) == 0) {
            logmsg("debug: stopped at %s until killed", name);
            for (;;)
                sleep(3600);
        }
    }
}

static char *path_in_bundle(const char *name)
{
    Buf b = {0};
    buf_adds(&b, cfg.bundle);
    if (b.len && b.p[b.len - 1] != '/')
        buf_addc(&b, '/');
    buf_adds(&b, name);
    return buf_cstr(&b);
}

/* os.path.dirname */
static char *py_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrndup("", 0);
    size_t n = (size_t)(slash - path) + 1;
    size_t all = 0;
    while (all < n && path[all] == '/')
        all++;
    if (all != n)
        while (n > 0 && path[n - 1] == '/')
            n--;
    return xstrndup(path, n);
}

static void status_json(Buf *b, bool spaced)
{
    const char *c = spaced ? ", " : ",", *k = spaced ? ": " : ":";
    buf_addf(b, "{\"exit_code\"%s%lld%s\"signal\"%s%lld%s\"started_at\"%s%lld%s\"finished_at\"%s%lld%s"
             "\"oom_killed\"%s%s%s\"reason\"%s", k, status.exit_code, c, k, status.signal, c, k, status.started_at, c,
             k, status.finished_at, c, k, status.oom_killed ? "true" : "false", c, k);
    json_cstr(b, status.reason);
    buf_addf(b, "%s\"message\"%s", c, k);
    json_cstr(b, status.message);
    buf_addc(b, '}');
}

/* ------------------------------------------------------------------------------------------------------------ */
/* connections                                                                                                  */

static void stdin_session_ended(void);
static void conn_process(Conn *c);

static void conn_update(Conn *c)
{
    if (c->closed)
        return;
    watch_set(&c->w, (c->paused ? 0 : EPOLLIN) | (buf_size(&c->wbuf) ? EPOLLOUT : 0));
}

static void conn_close(Conn *c)
{
    if (c->closed)
        return;
    c->closed = true;
    watch_set(&c->w, 0);
    close(c->w.fd);
    c->w.fd = -1;
    for (Deleg *d = delegs; d; d = d->next)
        if (d->client == c)
            d->client = NULL;
    if (c->attacher) {
        c->attacher = false;
        if (c->att_stdin)
            stdin_session_ended();
    }
}

static void conn_flush(Conn *c)
{
    if (c->closed)
        return;
    while (buf_size(&c->wbuf)) {
        ssize_t n = send(c->w.fd, buf_data(&c->wbuf), buf_size(&c->wbuf), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_update(c);
                return;
            }
            conn_close(c);
            return;
        }
        buf_consume(&c->wbuf, (size_t)n);
    }
    conn_update(c);
    if (c->close_after_flush)
        conn_close(c);
}

static void conn_send(Conn *c, const void *data, size_t n)
{
    if (c->closed)
        return;
    buf_add(&c->wbuf, data, n);
    conn_flush(c);
}

static void conn_send_frame(Conn *c, int stream, const char *data, size_t n)
{
    size_t start = 0;
    do {
        size_t part = n - start > MAX_FRAME ? MAX_FRAME : n - start;
        unsigned char h[FRAME_HEADER] = {(unsigned char)stream, (unsigned char)(part >> 24),
                                         (unsigned char)(part >> 16), (unsigned char)(part >> 8),
                                         (unsigned char)part};
        if (!c->closed) {
            buf_add(&c->wbuf, h, sizeof h);
            buf_add(&c->wbuf, data + start, part);
        }
        start += part;
    } while (start < n);
    conn_flush(c);
}

static void conn_close_after_flush(Conn *c)
{
    c->close_after_flush = true;
    conn_flush(c);
}

static void reply_ok(Conn *c, const char *fields)
{
    Buf b = {0};
    buf_addf(&b, "{\"v\":%d,\"ok\":true%s}\n", PROTOCOL_VERSION, fields ? fields : "");
    conn_send(c, b.p, b.len);
    buf_free(&b);
}

__attribute__((format(printf, 3, 4))) static void reply_error(Conn *c, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    Buf b = {0};
    buf_addf(&b, "{\"v\":%d,\"ok\":false,\"error\":{\"kind\":", PROTOCOL_VERSION);
    json_cstr(&b, kind);
    buf_adds(&b, ",\"message\":");
    json_cstr(&b, msg ? msg : "?");
    buf_adds(&b, "}}\n");
    conn_send(c, b.p, b.len);
    buf_free(&b);
    free(msg);
}

static Conn *conn_new(int fd)
{
    Conn *c = xcalloc(sizeof *c);
    c->w.kind = K_CONN;
    c->w.fd = fd;
    c->next = conns;
    conns = c;
    conn_update(c);
    return c;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the CRI log (shim/io/cri_log.py)                                                                             */

static char logbuf[65536] __attribute__((aligned(4096)));
static size_t logbuf_len;
static bool logbuf_error;

static void log_flush(void)
{
    size_t done = 0;
    while (done < logbuf_len && !logbuf_error) {
        ssize_t n = write(log_fd, logbuf + done, logbuf_len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || n == 0) {
            int e = n < 0 ? errno : EIO;
            logbuf_error = true;
            if (!log_failed) {
                log_failed = true;
                logmsg("cannot write the container log %s: %s; output is dropped until the log is reopened",
                       cfg.log_path, strerror(e));
            }
            break;
        }
        done += (size_t)n;
    }
    logbuf_len = 0;
}

static void log_put(const char *data, size_t n)
{
    while (n && !logbuf_error) {
        size_t room = sizeof logbuf - logbuf_len;
        size_t part = n < room ? n : room;
        memcpy(logbuf + logbuf_len, data, part);
        logbuf_len += part;
        data += part;
        n -= part;
        if (logbuf_len == sizeof logbuf)
            log_flush();
    }
}

static void log_line(const char *prefix, size_t plen, const char *data, size_t n)
{
    log_put(prefix, plen);
    log_put(data, n);
    log_put("\n", 1);
}

/* format_chunk: one timestamp for the chunk; complete lines are F lines (a longer one than max_line: P parts of
 * max_line, its last 1..max_line bytes F); an unterminated tail: P parts at once */
static void cri_log_write(int stream, const char *chunk, size_t n)
{
    if (log_fd < 0 || n == 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64], pre_p[96], pre_f[96];
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    const char *name = stream == STREAM_STDERR ? "stderr" : "stdout";
    int lp = snprintf(pre_p, sizeof pre_p, "%s.%09ldZ %s P ", stamp, (long)ts.tv_nsec, name);
    int lf = snprintf(pre_f, sizeof pre_f, "%s.%09ldZ %s F ", stamp, (long)ts.tv_nsec, name);
    size_t max = (size_t)cfg.log_max_line;
    logbuf_len = 0;
    logbuf_error = false;
    const char *p = chunk, *end = chunk + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl) {
            size_t len = (size_t)(nl - p);
            if (len > max) {
                size_t last = (len - 1) / max * max;
                for (size_t i = 0; i < last; i += max)
                    log_line(pre_p, (size_t)lp, p + i, max);
                log_line(pre_f, (size_t)lf, p + last, len - last);
            } else {
                log_line(pre_f, (size_t)lf, p, len);
            }
            p = nl + 1;
        } else {
            size_t len = (size_t)(end - p);
            for (size_t i = 0; i < len; i += max)
                log_line(pre_p, (size_t)lp, p + i, len - i < max ? len - i : max);
            p = end;
        }
    }
    if (!logbuf_error)
        log_flush();
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the container's stdin                                                                                        */

static void resume_stdin_sources(void)
{
    for (Conn *c = conns; c; c = c->next) {
        if (c->paused && !c->closed) {
            c->paused = false;
            conn_update(c);
            if (buf_size(&c->rbuf))
                conn_process(c);
        }
    }
}

static void sink_close_now(void)
{
    if (!sink.active)
        return;
    sink.active = false;
    watch_set(&sink.w, 0);
    if (sink.w.fd != master)
        close(sink.w.fd);
    sink.w.fd = -1;
    buf_free(&sink.buf);
    resume_stdin_sources();
}

static void sink_flush(void)
{
    if (!sink.active)
        return;
    while (buf_size(&sink.buf)) {
        ssize_t n = write(sink.w.fd, buf_data(&sink.buf), buf_size(&sink.buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                watch_set(&sink.w, EPOLLOUT);
                return;
            }
            sink_close_now(); /* the reader went away (EPIPE, EIO): nothing more can be delivered */
            return;
        }
        buf_consume(&sink.buf, (size_t)n);
    }
    watch_set(&sink.w, 0);
    if (sink.close_when_empty)
        sink_close_now();
    else
        resume_stdin_sources();
}

static void sink_close(void)
{
    sink.close_when_empty = true;
    sink_flush();
}

static void stdin_session_ended(void)
{
    /* stdin_once: the container sees EOF when the first attach session that wrote to it ends */
    if (cfg.stdin_once && have_stdin && master < 0) {
        have_stdin = false;
        sink_close();
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the container's output                                                                                       */

static char readbuf[READ_SIZE] __attribute__((aligned(4096)));
static char recvbuf[RECV_SIZE] __attribute__((aligned(4096)));
static bool scratch_used; /* the buffers above (or big heap buffers) were used since the last trim */

/* the PSS budget: pages touched by a burst of output or requests are given back once the monitor is idle */
static void trim(void)
{
    madvise(readbuf, sizeof readbuf, MADV_DONTNEED);
    madvise(recvbuf, sizeof recvbuf, MADV_DONTNEED);
    madvise(logbuf, sizeof logbuf, MADV_DONTNEED);
    malloc_trim(0);
    scratch_used = false;
}

static void attach_forward(int stream, const char *data, size_t n)
{
    for (Conn *c = conns; c; c = c->next) {
        if (c->closed || !c->attacher || !(c->att_streams & (1u << stream)))
            continue;
        conn_send_frame(c, stream, data, n);
        if (!c->closed && buf_size(&c->wbuf) > MAX_ATTACH_BACKLOG) {
            logmsg("dropping an attach session that fell %zu bytes behind", buf_size(&c->wbuf));
            conn_close(c);
        }
    }
}

static void output_close(Output *o)
{
    if (!o->open)
        return;
    o->open = false;
    watch_set(&o->w, 0);
    close(o->w.fd);
    o->w.fd = -1;
}

/* limit reads (0: until the pipe is empty); false once the output is closed */
static void output_read(Output *o, int limit)
{
    scratch_used = true;
    for (int i = 0; o->open && (limit == 0 || i < limit); i++) {
        ssize_t n = read(o->w.fd, readbuf, sizeof readbuf);
        if (n < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno != EIO) /* EIO: a pty whose other side closed, an EOF */
                logmsg("reading the container's output failed: %s", strerror(errno));
            n = 0;
        }
        if (n == 0) {
            output_close(o);
            return;
        }
        cri_log_write(o->stream, readbuf, (size_t)n);
        attach_forward(o->stream, readbuf, (size_t)n);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* OOM kills (shim/oom.py)                                                                                      */

/* memory.events' oom_kill: 0 without a cgroup, -1 when it cannot be read */
static long long oom_kills(const char *dir)
{
    if (!*dir)
        return 0;
    char *path = NULL;
    if (asprintf(&path, "%s/memory.events", dir) < 0)
        return -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    free(path);
    if (fd < 0)
        return -1;
    char text[4096];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof text - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            return -1;
        }
        if (n == 0 || len + (size_t)n >= sizeof text - 1) {
            len += (size_t)(n > 0 ? n : 0);
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    text[len] = 0;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *space = strchr(line, ' ');
        if (space && (size_t)(space - line) == 8 && memcmp(line, "oom_kill", 8) == 0) {
            char *endp;
            errno = 0;
            long long v = strtoll(space + 1, &endp, 10);
            while (*endp == ' ' || *endp == '\t' || *endp == '\r')
                endp++;
            if (errno || endp == space + 1 || *endp)
                return -1;
            return v;
        }
        line = next;
    }
    return 0;
}

static bool oom_killed(int sig)
{
    long long count = oom_kills(oom_dir);
    if (count >= 0)
        return count > oom_before;
    char *parent = py_dirname(oom_dir);
    long long p = oom_kills(parent);
    free(parent);
    return sig == SIGKILL && p >= 0 && p > oom_parent_before;
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the init's exit                                                                                              */

/* protocol.write_file_atomic: temp + fsync + rename + fsync(dir); false with why */
static bool write_file_atomic(const char *path, const char *data, size_t n, mode_t mode, char *why, size_t whylen)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp%d", path, (int)getpid()) < 0) {
        snprintf(why, whylen, "out of memory");
        return false;
    }
    bool ok = false;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(why, whylen, "[Errno %d] %s: '%s'", errno, strerror(errno), tmp);
        goto out;
    }
    for (size_t done = 0; done < n;) {
        ssize_t w = write(fd, data + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(why, whylen, "[Errno %d] %s", errno, strerror(errno));
            close(fd);
            unlink(tmp);
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) < 0) {
        snprintf(why, whylen, "[Errno %d] %s", errno, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, path) < 0) {
        snprintf(why, whylen, "[Errno %d] %s: '%s' -> '%s'", errno, strerror(errno), tmp, path);
        unlink(tmp);
        goto out;
    }
    char *dir = py_dirname(path);
    int dfd = open(*dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        snprintf(why, whylen, "[Errno %d] %s: '%s'", errno, strerror(errno), *dir ? dir : ".");
    } else {
        if (fsync(dfd) < 0)
            snprintf(why, whylen, "[Errno %d] %s", errno, strerror(errno));
        else
            ok = true;
        close(dfd);
    }
    free(dir);
out:
    free(tmp);
    return ok;
}

/* status.json as protocol.write_status_file writes it: json.dumps(sort_keys=True) and a newline */
static void write_status_file(void)
{
    Buf b = {0};
    buf_addf(&b, "{\"exit_code\": %lld, \"finished_at\": %lld, \"id\": ", status.exit_code, status.finished_at);
    json_cstr(&b, cfg.id);
    buf_adds(&b, ", \"message\": ");
    json_cstr(&b, status.message);
    buf_addf(&b, ", \"oom_killed\": %s, \"pid\": %d, \"reason\": ", status.oom_killed ? "true" : "false", init_pid);
    json_cstr(&b, status.reason);
    buf_addf(&b, ", \"signal\": %lld, \"started_at\": %lld, \"version\": %d}\n", status.signal, status.started_at,
             PROTOCOL_VERSION);
    char *path = path_in_bundle(STATUS_NAME), why[PATH_MAX * 2 + 128];
    if (!write_file_atomic(path, b.p, b.len, 0644, why, sizeof why))
        logmsg("cannot write the status file: %s", why);
    free(path);
    buf_free(&b);
}

/* every attacher gets the exit frame (json.dumps of the status), then its connection closes */
static void attachers_exited(void)
{
    Buf frame = {0};
    status_json(&frame, true);
    for (Conn *c = conns; c; c = c->next) {
        if (c->attacher && !c->closed) {
            c->attacher = false;
            conn_send_frame(c, STREAM_EXIT, buf_data(&frame), buf_size(&frame));
            conn_close_after_flush(c);
        }
    }
    buf_free(&frame);
}

static void on_exit_status(int wstatus)
{
    long long finished = now_ns(CLOCK_REALTIME);
    for (int i = 0; i < n_outputs; i++) /* what is already in the pipes goes to the log first */
        output_read(&outputs[i], 0);
    int code = 255, sig = 0;
    if (WIFSIGNALED(wstatus)) {
        sig = WTERMSIG(wstatus);
        code = 128 + sig;
    } else if (WIFEXITED(wstatus)) {
        code = WEXITSTATUS(wstatus);
    }
    bool oom = oom_killed(sig);
    status = (Status){.exit_code = code, .signal = sig, .started_at = started_at, .finished_at = finished,
                      .oom_killed = oom, .reason = "", .message = ""};
    has_status = true;
    write_status_file();
    cstate = "stopped";
    char sigtext[32] = "";
    if (sig)
        snprintf(sigtext, sizeof sigtext, " (signal %d)", sig);
    logmsg("container %s exited: code %d%s%s", cfg.id, code, sigtext, oom ? " oom-killed" : "");
    point("shim.exited");
    Buf reply = {0};
    buf_adds(&reply, ",\"status\":");
    status_json(&reply, false);
    for (Conn *c = conns; c; c = c->next) {
        for (; c->waits > 0; c->waits--)
            reply_ok(c, buf_cstr(&reply));
    }
    buf_free(&reply);
    attachers_exited();
    if (have_stdin) {
        have_stdin = false;
        sink_close();
    }
    if (delete_after_exit) {
        delete_after_exit = false;
        delete_and_exit();
    }
}

static void reap(void)
{
    for (;;) {
        int ws;
        pid_t pid = waitpid(-1, &ws, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return;
        if (pid == init_pid && !has_status)
            on_exit_status(ws);
        /* any other pid: an orphan of the container, reaped as its subreaper */
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* delegation to crispd's zygote                                                                                */

static int zygote_connect(int *out)
{
    const char *path = cfg.zygote_socket;
    if (!*path)
        return ENOENT;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return errno;
    struct timeval tv = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int dirfd = -1;
    if (strlen(path) < sizeof addr.sun_path) {
        strcpy(addr.sun_path, path);
    } else { /* too long for sun_path: through an O_PATH fd of its dir */
        char *dir = py_dirname(path);
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        dirfd = open(*dir ? dir : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
        free(dir);
        if (dirfd < 0) {
            int e = errno;
            close(s);
            return e;
        }
        if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/%s", dirfd, base) >=
            sizeof addr.sun_path) {
            close(dirfd);
            close(s);
            return ENAMETOOLONG;
        }
    }
    int rc;
    do
        rc = connect(s, (struct sockaddr *)&addr, sizeof addr);
    while (rc < 0 && errno == EINTR);
    int e = errno;
    if (dirfd >= 0)
        close(dirfd);
    if (rc < 0) {
        close(s);
        return e;
    }
    *out = s;
    return 0;
}

/* one line and one fd (two with fd2 >= 0) to the zygote: {"work":"shim_op","bundle":..,"state":{..},"op":<request>};
   0 or errno */
static int zygote_send(const char *op, size_t oplen, int fd, int fd2)
{
    int s = -1;
    int e = zygote_connect(&s);
    if (e)
        return e;
    Buf b = {0};
    buf_adds(&b, "{\"work\":\"shim_op\",\"bundle\":");
    json_cstr(&b, cfg.bundle);
    buf_adds(&b, ",\"state\":{\"state\":");
    json_cstr(&b, cstate);
    buf_addf(&b, ",\"pid\":%d,\"started_at\":%lld,\"rootfs_mounted\":", init_pid, started_at);
    json_cstr(&b, rootfs_mounted);
    buf_adds(&b, "},\"op\":");
    buf_add(&b, op, oplen);
    buf_adds(&b, "}\n");
    struct iovec iov = {.iov_base = b.p, .iov_len = b.len};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    int fds[2] = {fd, fd2};
    size_t nfds = fd2 >= 0 ? 2 : 1;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = CMSG_SPACE(nfds * sizeof(int))};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
    ssize_t n;
    do
        n = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    e = n < 0 ? errno : 0;
    for (size_t done = n > 0 ? (size_t)n : 0; !e && done < b.len;) {
        ssize_t w = send(s, b.p + done, b.len - done, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            e = w < 0 ? errno : EIO;
        else
            done += (size_t)w;
    }
    close(s);
    buf_free(&b);
    return e;
}

static const char *deleg_opname(int op)
{
    return op == D_UPDATE ? "update" : op == D_INT_DELETE ? "delete" : "kill";
}

/* start a delegated op answered on a socketpair; 0 or errno (the zygote cannot be reached) */
static int deleg_start(int op, Conn *client, const char *request, size_t len)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return errno;
    int e = zygote_send(request, len, sv[1], -1);
    close(sv[1]);
    if (e) {
        close(sv[0]);
        return e;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    Deleg *d = xcalloc(sizeof *d);
    d->w.kind = K_DELEG;
    d->w.fd = sv[0];
    d->op = op;
    d->client = client;
    d->next = delegs;
    delegs = d;
    watch_set(&d->w, EPOLLIN);
    if (op == D_KILL_ALL || op == D_INT_KILL)
        kills_in_flight++;
    return 0;
}

static void kill_done(void)
{
    /* a delete waits for the kills in flight (runc freezes the cgroup while it signals every process) */
    if (--kills_in_flight == 0 && delete_after_kills) {
        delete_after_kills = false;
        delete_and_exit();
    }
}

static void delete_failed(const char *kind, const char *message, const char *line, size_t len)
{
    /* the record stays (shim.json, the socket, the rootfs mount); a later shutdown tries again */
    logmsg("%s; keeping the container's record for another try", message);
    shutting_down = false;
    for (Conn *c = conns; c; c = c->next) {
        for (; c->shutdowns > 0; c->shutdowns--) {
            if (line)
                conn_send(c, line, len);
            else
                reply_error(c, kind, "%s", message);
        }
    }
}

static void exit_when_flushed(void)
{
    if (!exiting) {
        exiting = true;
        exit_deadline = now_ns(CLOCK_MONOTONIC) + FLUSH_GRACE_NS;
    }
}

static void deleted(void)
{
    point("shim.deleted");
    for (int i = 0; i < n_outputs; i++)
        output_close(&outputs[i]);
    if (log_fd >= 0) {
        close(log_fd);
        log_fd = -1;
    }
    const char *names[] = {SOCKET_NAME, INFO_NAME, INIT_PID_NAME};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char *path = path_in_bundle(names[i]);
        unlink(path);
        free(path);
    }
    logmsg("container %s deleted; shim exits", cfg.id);
    finish_when_delegates_gone = true;
    finish_shutdown();
}

/* the shutdown's answer, once no exec delegate is left (each one's channel ends with its process) */
static void finish_shutdown(void)
{
    if (!finish_when_delegates_gone)
        return;
    for (Ctl *ctl = ctls; ctl; ctl = ctl->next)
        if (!ctl->closed)
            return;
    finish_when_delegates_gone = false;
    for (Conn *c = conns; c; c = c->next)
        for (; c->shutdowns > 0; c->shutdowns--)
            reply_ok(c, NULL);
    exit_when_flushed();
}

static void deleg_done(Deleg *d, const char *line, size_t len)
{
    switch (d->op) {
    case D_UPDATE:
    case D_KILL_ALL:
        if (d->client) {
            if (line)
                conn_send(d->client, line, len);
            else
                reply_error(d->client, "Internal", "the delegate of %s died", deleg_opname(d->op));
        }
        if (d->op == D_KILL_ALL)
            kill_done();
        break;
    case D_INT_KILL:
        if (!line)
            logmsg("the delegate of kill died");
        kill_done();
        break;
    case D_INT_DELETE: {
        if (!line) {
            delete_failed("Internal", "the delegate of delete died", NULL, 0);
            break;
        }
        char err[256];
        JVal *reply = jparse(line, len, err, sizeof err);
        JVal *ok = jget(reply, "ok");
        if (reply && ok && ok->t == J_TRUE) {
            jfree(reply);
            deleted();
            break;
        }
        JVal *e = jget(reply, "error");
        JVal *m = jget(e, "message"), *k = jget(e, "kind");
        char *message = m && m->t == J_STR ? xstrndup(m->s, m->n) : xstrndup(line, len ? len - 1 : 0);
        delete_failed(k && k->t == J_STR ? k->s : "Internal", message, reply ? line : NULL, len);
        free(message);
        jfree(reply);
        break;
    }
    }
}

static void deleg_close(Deleg *d)
{
    if (d->closed)
        return;
    d->closed = true;
    watch_set(&d->w, 0);
    close(d->w.fd);
    d->w.fd = -1;
}

static void deleg_read(Deleg *d)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = recv(d->w.fd, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0 || buf_size(&d->rbuf) > 2 * MAX_FRAME) {
            /* the delegate's end closes when it exits: its answer counts from then on (a caller told "done" finds
               nothing of it left); an end without a (sane) line: it died */
            char *nl = buf_size(&d->rbuf) ? memchr(buf_data(&d->rbuf), '\n', buf_size(&d->rbuf)) : NULL;
            deleg_close(d);
            if (nl && n == 0)
                deleg_done(d, buf_data(&d->rbuf), (size_t)(nl - buf_data(&d->rbuf)) + 1);
            else
                deleg_done(d, NULL, 0);
            return;
        }
        buf_add(&d->rbuf, tmp, (size_t)n);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* shutdown (shim/container.py op_shutdown, _delete_and_exit)                                                   */

static const char DELETE_REQUEST[] = "{\"v\":1,\"op\":\"delete\"}";
static const char KILL_ALL_REQUEST[] = "{\"v\":1,\"op\":\"kill\",\"all\":true,\"signal\":9}";

static void delete_and_exit(void)
{
    if (kills_in_flight) {
        delete_after_kills = true;
        return;
    }
    int e = deleg_start(D_INT_DELETE, NULL, DELETE_REQUEST, sizeof DELETE_REQUEST - 1);
    if (e) {
        char *msg = NULL;
        if (asprintf(&msg, "%s: delete needs crispd (its zygote at %s: %s)", cfg.id, cfg.zygote_socket,
                     strerror(e)) < 0)
            msg = NULL;
        delete_failed("Unavailable", msg ? msg : "delete needs crispd", NULL, 0);
        free(msg);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* the requests                                                                                                 */

static char *repr(const JVal *v)
{
    Buf b = {0};
    pyrepr(&b, v);
    return buf_cstr(&b);
}

static void unavailable(Conn *c, const char *op, int e)
{
    reply_error(c, "Unavailable", "%s: %s needs crispd (its zygote at %s: %s)", cfg.id, op, cfg.zygote_socket,
                strerror(e));
}

static void op_state(Conn *c)
{
    Buf b = {0};
    buf_adds(&b, ",\"id\":");
    json_cstr(&b, cfg.id);
    buf_adds(&b, ",\"state\":");
    json_cstr(&b, cstate);
    buf_addf(&b, ",\"pid\":%d,\"started_at\":%lld,\"shim_pid\":%d", init_pid, started_at, (int)getpid());
    if (has_status) {
        buf_adds(&b, ",\"status\":");
        status_json(&b, false);
    }
    reply_ok(c, buf_cstr(&b));
    buf_free(&b);
}

static void op_wait(Conn *c)
{
    if (!has_status) {
        c->waits++;
        return;
    }
    Buf b = {0};
    buf_adds(&b, ",\"status\":");
    status_json(&b, false);
    reply_ok(c, buf_cstr(&b));
    buf_free(&b);
}

static void op_kill(Conn *c, const JVal *msg, const char *raw, size_t rawlen)
{
    const JVal *sv = jget(msg, "signal");
    long long sig = SIGTERM;
    if (sv && (!jpyint(sv, &sig) || sig <= 0 || sig >= PY_NSIG)) {
        char *r = repr(sv);
        reply_error(c, "InvalidArgument", "bad signal %s", r);
        free(r);
        return;
    }
    bool all = jtruthy(jget(msg, "all"));
    if (has_status && !all) {
        reply_ok(c, NULL); /* already gone: nothing to signal */
        return;
    }
    if (!all) {
        /* the init cannot be reaped (and its pid reused) by anyone but us, so this pid is still the init */
        if (kill(init_pid, (int)sig) < 0 && errno != ESRCH) {
            reply_error(c, "Internal", "%s: kill failed: %s", cfg.id, strerror(errno));
            return;
        }
        reply_ok(c, NULL);
        return;
    }
    int e = deleg_start(D_KILL_ALL, c, raw, rawlen);
    if (e)
        unavailable(c, "kill", e);
}

static void op_update(Conn *c, const JVal *msg, const char *raw, size_t rawlen)
{
    const JVal *res = jget(msg, "resources");
    if (!res || res->t != J_OBJ) {
        reply_error(c, "InvalidArgument", "%s: update needs the resources as an object", cfg.id);
        return;
    }
    if (has_status) {
        reply_error(c, "FailedPrecondition", "container %s is %s: nothing to update", cfg.id, cstate);
        return;
    }
    int e = deleg_start(D_UPDATE, c, raw, rawlen);
    if (e)
        unavailable(c, "update", e);
}

/* true when the connection went to the delegate */
static bool op_exec(Conn *c, const char *raw, size_t rawlen)
{
    if (has_status) {
        reply_error(c, "FailedPrecondition", "container %s is %s, not running", cfg.id, cstate);
        return false;
    }
    /* the delegate gets the connection as a fresh one is: blocking; and a news channel for its terminals */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        reply_error(c, "ResourceExhausted", "%s: exec: cannot make a socketpair: %s", cfg.id, strerror(errno));
        return false;
    }
    int flags = fcntl(c->w.fd, F_GETFL);
    fcntl(c->w.fd, F_SETFL, flags & ~O_NONBLOCK);
    int e = zygote_send(raw, rawlen, c->w.fd, sv[1]);
    close(sv[1]);
    if (e) {
        close(sv[0]);
        fcntl(c->w.fd, F_SETFL, flags);
        unavailable(c, "exec", e);
        return false;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    Ctl *ctl = xcalloc(sizeof *ctl);
    ctl->w.kind = K_CTL;
    ctl->w.fd = sv[0];
    ctl->next = ctls;
    ctls = ctl;
    watch_set(&ctl->w, EPOLLIN);
    /* the delegate serves it from here: forget our copy */
    for (Deleg *d = delegs; d; d = d->next)
        if (d->client == c)
            d->client = NULL;
    c->closed = true;
    watch_set(&c->w, 0);
    close(c->w.fd);
    c->w.fd = -1;
    return true;
}

static void op_attach(Conn *c, const JVal *msg)
{
    if (has_status) {
        reply_error(c, "FailedPrecondition", "container %s is %s: cannot attach", cfg.id, cstate);
        return;
    }
    bool want_stdin = jtruthy(jget(msg, "stdin"));
    if (want_stdin && (!have_stdin || !cfg.stdin)) {
        reply_error(c, "FailedPrecondition", "container %s has no stdin to attach to", cfg.id);
        return;
    }
    const JVal *out = jget(msg, "stdout"), *err = jget(msg, "stderr");
    reply_ok(c, master >= 0 ? ",\"tty\":true" : ",\"tty\":false");
    c->framed = true;
    c->attacher = true;
    c->att_stdin = want_stdin;
    c->att_streams = ((!out || jtruthy(out)) ? 1u << STREAM_STDOUT : 0) |
                     ((!err || jtruthy(err)) ? 1u << STREAM_STDERR : 0);
}

static void tty_drop(Tty **pt)
{
    Tty *t = *pt;
    *pt = t->next;
    close(t->fd);
    free(t->exec_id);
    free(t);
}

static void ctl_close(Ctl *ctl)
{
    for (Tty **pt = &ttys; *pt;) {
        if ((*pt)->owner == ctl)
            tty_drop(pt);
        else
            pt = &(*pt)->next;
    }
    watch_set(&ctl->w, 0);
    close(ctl->w.fd);
    ctl->w.fd = -1;
    ctl->closed = true;
    finish_shutdown();
}

/* every message the delegate has sent so far */
static void ctl_read(Ctl *ctl)
{
    while (!ctl->closed) {
        char data[1024];
        union {
            char buf[CMSG_SPACE(4 * sizeof(int))];
            struct cmsghdr align;
        } control;
        struct iovec iov = {.iov_base = data, .iov_len = sizeof data - 1};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(ctl->w.fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        int got = -1;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                if (got < 0)
                    got = fd;
                else
                    close(fd);
            }
        }
        if (n <= 0) { /* the delegate is gone (or the channel broke): its terminals with it */
            if (got >= 0)
                close(got);
            ctl_close(ctl);
            return;
        }
        char err[128];
        JVal *m = jparse(data, (size_t)n - (data[n - 1] == '\n'), err, sizeof err);
        const JVal *op = m ? jget(m, "op") : NULL, *id = m ? jget(m, "exec_id") : NULL;
        if (op && op->t == J_STR && id && id->t == J_STR) {
            for (Tty **pt = &ttys; *pt; pt = &(*pt)->next) {
                if (strcmp((*pt)->exec_id, id->s) == 0) {
                    tty_drop(pt);
                    break;
                }
            }
            if (strcmp(op->s, "tty") == 0 && got >= 0) {
                Tty *t = xcalloc(sizeof *t);
                t->exec_id = xstrndup(id->s, id->n);
                t->fd = got;
                t->owner = ctl;
                t->next = ttys;
                ttys = t;
                got = -1;
            }
        } else {
            logmsg("ignoring a bad message from an exec delegate: %.*s", (int)n, data);
        }
        if (got >= 0)
            close(got);
        jfree(m);
    }
}

static bool set_window_size(int fd, long long width, long long height)
{
    struct winsize ws = {.ws_row = (unsigned short)height, .ws_col = (unsigned short)width};
    return ioctl(fd, TIOCSWINSZ, &ws) == 0;
}

static void op_resize(Conn *c, const JVal *msg)
{
    const JVal *wv = jget(msg, "width"), *hv = jget(msg, "height");
    long long w, h;
    if (!jpyint(wv, &w) || !jpyint(hv, &h) || w < 0 || w >= 65536 || h < 0 || h >= 65536) {
        char *rw = repr(wv), *rh = repr(hv);
        reply_error(c, "InvalidArgument", "bad window size %sx%s", rw, rh);
        free(rw);
        free(rh);
        return;
    }
    const JVal *exec_id = jget(msg, "exec_id");
    if (jtruthy(exec_id)) { /* an exec's terminal, as its delegate told us (all its news read first) */
        for (Ctl *ctl = ctls; ctl; ctl = ctl->next)
            ctl_read(ctl);
        for (Tty *t = ttys; exec_id->t == J_STR && t; t = t->next) {
            if (strcmp(t->exec_id, exec_id->s) == 0) {
                if (!set_window_size(t->fd, w, h))
                    reply_error(c, "Internal", "%s: resize failed: %s", cfg.id, strerror(errno));
                else
                    reply_ok(c, NULL);
                return;
            }
        }
        char *r = repr(exec_id);
        reply_error(c, "NotFound", "%s: no running exec %s", cfg.id, r);
        free(r);
        return;
    }
    if (master < 0) {
        reply_error(c, "FailedPrecondition", "%s: container has no terminal", cfg.id);
        return;
    }
    if (!set_window_size(master, w, h)) {
        reply_error(c, "Internal", "%s: resize failed: %s", cfg.id, strerror(errno));
        return;
    }
    reply_ok(c, NULL);
}

static void op_reopen_log(Conn *c)
{
    if (cfg.log_path[0]) {
        if (log_fd >= 0)
            close(log_fd);
        log_fd = open(cfg.log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (log_fd < 0) {
            reply_error(c, "Internal", "%s: cannot reopen the log %s: %s", cfg.id, cfg.log_path, strerror(errno));
            return;
        }
        log_failed = false;
    }
    reply_ok(c, NULL);
}

static void op_debug(Conn *c)
{
    Buf b = {0};
    buf_addf(&b, ",\"pid\":%d,\"modules\":[],\"threads\":1,\"version\":", (int)getpid());
    json_cstr(&b, CRISP_VERSION);
    buf_adds(&b, ",\"monitor\":true");
    reply_ok(c, buf_cstr(&b));
    buf_free(&b);
}

static void op_start(Conn *c)
{
    if (has_status && started_at == 0) {
        reply_error(c, "FailedPrecondition", "container %s exited before it was started (exit code %lld)", cfg.id,
                    status.exit_code);
        return;
    }
    reply_error(c, "FailedPrecondition", "container %s is %s, not created", cfg.id, cstate);
}

static void op_shutdown(Conn *c, const JVal *msg)
{
    bool force = jtruthy(jget(msg, "force"));
    if (!has_status && !force) {
        reply_error(c, "FailedPrecondition", "container %s is %s: stop it first (or shut down with force)", cfg.id,
                    cstate);
        return;
    }
    c->shutdowns++;
    if (shutting_down)
        return;
    shutting_down = true;
    if (!has_status) {
        logmsg("shutdown with force: killing container %s", cfg.id);
        kill(init_pid, SIGKILL);
        int e = deleg_start(D_INT_KILL, NULL, KILL_ALL_REQUEST, sizeof KILL_ALL_REQUEST - 1);
        if (e)
            logmsg("cannot kill every process of container %s: crispd's zygote at %s: %s", cfg.id,
                   cfg.zygote_socket, strerror(e));
        delete_after_exit = true;
    } else {
        delete_and_exit();
    }
}

static bool is_one(const JVal *v)
{
    return v && (v->t == J_TRUE || (v->t == J_NUM && v->d == 1.0 && (v->isint ? v->i == 1 : true)));
}

/* one request (server.py _dispatch); true when the connection was handed to a delegate */
static bool dispatch(Conn *c, const JVal *msg, const char *raw, size_t rawlen)
{
    const JVal *v = jget(msg, "v");
    if (!is_one(v)) {
        char *r = repr(v);
        reply_error(c, "InvalidArgument", "protocol version %s is not %d", r, PROTOCOL_VERSION);
        free(r);
        return false;
    }
    const JVal *op = jget(msg, "op");
    const char *name = op && op->t == J_STR && strlen(op->s) == op->n ? op->s : "";
    if (!strcmp(name, "state"))
        op_state(c);
    else if (!strcmp(name, "wait"))
        op_wait(c);
    else if (!strcmp(name, "kill"))
        op_kill(c, msg, raw, rawlen);
    else if (!strcmp(name, "attach"))
        op_attach(c, msg);
    else if (!strcmp(name, "resize"))
        op_resize(c, msg);
    else if (!strcmp(name, "reopen_log"))
        op_reopen_log(c);
    else if (!strcmp(name, "debug"))
        op_debug(c);
    else if (!strcmp(name, "update"))
        op_update(c, msg, raw, rawlen);
    else if (!strcmp(name, "exec"))
        return op_exec(c, raw, rawlen);
    else if (!strcmp(name, "shutdown"))
        op_shutdown(c, msg);
    else if (!strcmp(name, "create"))
        reply_error(c, "AlreadyExists", "container %s is already %s", cfg.id, cstate);
    else if (!strcmp(name, "start"))
        op_start(c);
    else {
        char *r = repr(op);
        reply_error(c, "Unimplemented", "unknown operation %s", r);
        free(r);
    }
    return false;
}

static void resize_from_frame(const char *payload, size_t n)
{
    char err[256];
    JVal *size = jparse(payload, n, err, sizeof err);
    long long w = 0, h = 0;
    const JVal *wv = jget(size, "width"), *hv = jget(size, "height");
    if (!size) {
        logmsg("ignoring a bad resize request: %s", err);
    } else if (!wv || !hv || (wv->t != J_NUM && wv->t != J_TRUE && wv->t != J_FALSE) ||
               (hv->t != J_NUM && hv->t != J_TRUE && hv->t != J_FALSE)) {
        logmsg("ignoring a bad resize request: %s", !wv ? "'width'" : !hv ? "'height'" : "not a number");
    } else {
        w = wv->t == J_NUM ? (long long)wv->d : wv->t == J_TRUE;
        h = hv->t == J_NUM ? (long long)hv->d : hv->t == J_TRUE;
        if (w < 0 || w > 65535 || h < 0 || h > 65535)
            logmsg("ignoring a bad resize request: size out of range");
        else if (!set_window_size(master, w, h))
            logmsg("ignoring a bad resize request: [Errno %d] %s", errno, strerror(errno));
    }
    jfree(size);
}

static void on_frame(Conn *c, int stream, const char *payload, size_t n)
{
    if (stream == STREAM_STDIN && c->att_stdin) {
        if (n == 0) {
            c->att_stdin = false;
            stdin_session_ended();
        } else if (have_stdin && sink.active) { /* a closed stdin (its reader went away) takes nothing more */
            buf_add(&sink.buf, payload, n);
            sink_flush();
            if (sink.active && buf_size(&sink.buf) > SINK_HIGH) { /* pause every stdin source until it drains */
                for (Conn *o = conns; o; o = o->next) {
                    if (!o->closed && o->attacher && o->att_stdin && !o->paused) {
                        o->paused = true;
                        conn_update(o);
                    }
                }
            }
        }
    } else if (stream == STREAM_RESIZE) {
        resize_from_frame(payload, n);
    }
}

static void conn_process(Conn *c)
{
    while (!c->closed && !c->paused) {
        char *d = buf_data(&c->rbuf);
        size_t n = buf_size(&c->rbuf);
        if (c->framed) {
            if (n < FRAME_HEADER)
                return;
            const unsigned char *h = (const unsigned char *)d;
            size_t len = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
            if (len > MAX_FRAME) {
                conn_close(c);
                return;
            }
            if (n < FRAME_HEADER + len)
                return;
            on_frame(c, h[0], d + FRAME_HEADER, len);
            buf_consume(&c->rbuf, FRAME_HEADER + len);
        } else {
            char *nl = memchr(d, '\n', n);
            if (!nl)
                return;
            size_t len = (size_t)(nl - d);
            char err[256];
            JVal *msg = jparse(d, len, err, sizeof err);
            if (!msg || msg->t != J_OBJ) {
                reply_error(c, "InvalidArgument", "bad request: %s", msg ? "not an object" : err);
                jfree(msg);
                buf_consume(&c->rbuf, len + 1);
                continue;
            }
            /* the request as it came, without surrounding blanks, for a delegate */
            const char *raw = d;
            size_t rawlen = len;
            while (rawlen && (*raw == ' ' || *raw == '\t' || *raw == '\r')) {
                raw++;
                rawlen--;
            }
            while (rawlen && (raw[rawlen - 1] == ' ' || raw[rawlen - 1] == '\t' || raw[rawlen - 1] == '\r'))
                rawlen--;
            bool handed = dispatch(c, msg, raw, rawlen);
            jfree(msg);
            if (handed)
                return;
            buf_consume(&c->rbuf, len + 1);
        }
    }
}

static void conn_read(Conn *c)
{
    scratch_used = true;
    ssize_t n = recv(c->w.fd, recvbuf, sizeof recvbuf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        conn_close(c);
        return;
    }
    buf_add(&c->rbuf, recvbuf, (size_t)n);
    if (!c->framed && buf_size(&c->rbuf) > MAX_FRAME + RECV_SIZE) {
        reply_error(c, "InvalidArgument", "request line too long");
        conn_close(c);
        return;
    }
    conn_process(c);
}

static void on_accept(void)
{
    for (;;) {
        int fd = accept4(listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                logmsg("accept on the control socket failed: [Errno %d] %s", errno, strerror(errno));
            return;
        }
        conn_new(fd);
    }
}

/* ------------------------------------------------------------------------------------------------------------ */
/* start-up: the state handed over by the Python shim                                                           */

__attribute__((noreturn, format(printf, 1, 2))) static void bad_state(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    logmsg("crisp-monitor: bad hand-over state: %s", msg ? msg : "?");
    exit(1);
}

static const JVal *need(const JVal *obj, const char *key, int type)
{
    const JVal *v = jget(obj, key);
    bool ok = v && (v->t == type || (type == J_TRUE && v->t == J_FALSE) || (type == J_NUM && v->isint));
    if (!ok || (type == J_NUM && !v->isint))
        bad_state("%s: missing or not %s", key,
                  type == J_STR ? "a string" : type == J_NUM ? "an integer" : type == J_TRUE ? "a boolean" :
                  type == J_OBJ ? "an object" : "a list");
    return v;
}

static char *need_str(const JVal *obj, const char *key)
{
    const JVal *v = need(obj, key, J_STR);
    if (strlen(v->s) != v->n)
        bad_state("%s: has a NUL byte", key);
    return xstrndup(v->s, v->n);
}

static long long need_int(const JVal *obj, const char *key) { return need(obj, key, J_NUM)->i; }

static bool need_bool(const JVal *obj, const char *key) { return need(obj, key, J_TRUE)->t == J_TRUE; }

static int need_fd(const JVal *obj, const char *key, bool optional)
{
    long long fd = need_int(obj, key);
    if (fd < (optional ? -1 : 0) || fd > INT_MAX || (fd >= 0 && fcntl((int)fd, F_GETFD) < 0))
        bad_state("%s: %lld is not an open fd", key, fd);
    if (fd >= 0) {
        fcntl((int)fd, F_SETFL, fcntl((int)fd, F_GETFL) | O_NONBLOCK);
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    }
    return (int)fd;
}

static void load_state(const char *id, int state_fd)
{
    Buf text = {0};
    char tmp[4096];
    int flags = fcntl(state_fd, F_GETFL);
    if (flags < 0)
        bad_state("fd %d: %s", state_fd, strerror(errno));
    fcntl(state_fd, F_SETFL, flags & ~O_NONBLOCK); /* a pipe: read it to its end */
    for (;;) {
        ssize_t n = read(state_fd, tmp, sizeof tmp);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            bad_state("cannot read fd %d: %s", state_fd, strerror(errno));
        if (n == 0)
            break;
        buf_add(&text, tmp, (size_t)n);
    }
    close(state_fd);
    char err[256];
    JVal *st = jparse(buf_data(&text), buf_size(&text), err, sizeof err);
    if (!st)
        bad_state("%s", err);
    if (st->t != J_OBJ)
        bad_state("not an object");
    buf_free(&text);

    const JVal *config = need(st, "config", J_OBJ);
    cfg.id = need_str(config, "id");
    if (strcmp(cfg.id, id) != 0)
        bad_state("it is container %s's, not %s's", cfg.id, id);
    cfg.bundle = need_str(config, "bundle");
    cfg.log_path = need_str(config, "log_path");
    cfg.log_max_line = need_int(config, "log_max_line");
    if (cfg.log_max_line < 1)
        bad_state("log_max_line: %lld", cfg.log_max_line);
    cfg.stdin = need_bool(config, "stdin");
    cfg.stdin_once = need_bool(config, "stdin_once");
    cfg.cgroup2_mount = need_str(config, "cgroup2_mount");
    cfg.cgroup = need_str(config, "cgroup");
    cfg.zygote_socket = need_str(config, "zygote_socket");
    const JVal *hang = need(config, "hang_points", J_ARR);
    cfg.hang_points = xcalloc((hang->cnt + 1) * sizeof *cfg.hang_points);
    for (size_t i = 0; i < hang->cnt; i++) {
        if (hang->v[i]->t != J_STR)
            bad_state("hang_points: not a list of strings");
        cfg.hang_points[cfg.n_hang++] = xstrndup(hang->v[i]->s, hang->v[i]->n);
    }

    listener.fd = need_fd(st, "listener", false);
    log_fd = need_fd(st, "log_fd", true);
    const JVal *outs = need(st, "outputs", J_ARR);
    if (outs->cnt > sizeof outputs / sizeof *outputs)
        bad_state("outputs: %zu of them", outs->cnt);
    for (size_t i = 0; i < outs->cnt; i++) {
        long long stream = need_int(outs->v[i], "stream");
        if (stream != STREAM_STDOUT && stream != STREAM_STDERR)
            bad_state("outputs: stream %lld", stream);
        outputs[n_outputs] = (Output){.w = {K_OUTPUT, need_fd(outs->v[i], "fd", false), 0}, .stream = (int)stream,
                                      .open = true};
        n_outputs++;
    }
    sink.w.fd = need_fd(st, "stdin_fd", true);
    sink.active = have_stdin = sink.w.fd >= 0;
    master = need_fd(st, "master", true);
    char *state = need_str(st, "state");
    if (strcmp(state, "running") != 0 && strcmp(state, "stopped") != 0)
        bad_state("state: %s", state);
    cstate = state;
    long long pid = need_int(st, "pid");
    if (pid <= 0 || pid > INT_MAX)
        bad_state("pid: %lld", pid);
    init_pid = (int)pid;
    started_at = need_int(st, "started_at");
    const JVal *sv = jget(st, "status");
    if (!sv)
        bad_state("status: missing");
    if (sv->t == J_OBJ) {
        status.exit_code = need_int(sv, "exit_code");
        status.signal = need_int(sv, "signal");
        status.started_at = need_int(sv, "started_at");
        status.finished_at = need_int(sv, "finished_at");
        status.oom_killed = need_bool(sv, "oom_killed");
        status.reason = need_str(sv, "reason");
        status.message = need_str(sv, "message");
        has_status = true;
    } else if (sv->t != J_NULL) {
        bad_state("status: neither null nor an object");
    }
    if (has_status != (strcmp(cstate, "stopped") == 0))
        bad_state("state %s with%s a status", cstate, has_status ? "" : "out");
    const JVal *oom = need(st, "oom", J_OBJ);
    oom_dir = need_str(oom, "cgroup_dir");
    oom_before = need_int(oom, "before");
    oom_parent_before = need_int(oom, "parent_before");
    rootfs_mounted = need_str(st, "rootfs_mounted");

    const JVal *cl = need(st, "conns", J_ARR);
    for (size_t i = 0; i < cl->cnt; i++) {
        const JVal *h = cl->v[i];
        int fd = need_fd(h, "fd", false);
        char *mode = need_str(h, "mode");
        Conn *c = conn_new(fd);
        if (!strcmp(mode, "wait")) {
            c->waits = 1;
        } else if (!strcmp(mode, "attach")) {
            c->framed = c->attacher = true;
            c->att_stdin = need_bool(h, "stdin");
            const JVal *streams = need(h, "streams", J_ARR);
            for (size_t j = 0; j < streams->cnt; j++)
                if (streams->v[j]->t == J_NUM && streams->v[j]->isint &&
                    (streams->v[j]->i == STREAM_STDOUT || streams->v[j]->i == STREAM_STDERR))
                    c->att_streams |= 1u << streams->v[j]->i;
        } else if (strcmp(mode, "idle") != 0) {
            bad_state("conns: mode %s", mode);
        }
        free(mode);
    }
    jfree(st);
}

static void sweep(void)
{
    for (Conn **pc = &conns; *pc;) {
        Conn *c = *pc;
        if (c->closed) {
            *pc = c->next;
            buf_free(&c->rbuf);
            buf_free(&c->wbuf);
            free(c);
        } else {
            pc = &c->next;
        }
    }
    for (Deleg **pd = &delegs; *pd;) {
        Deleg *d = *pd;
        if (d->closed) {
            *pd = d->next;
            buf_free(&d->rbuf);
            free(d);
        } else {
            pd = &d->next;
        }
    }
    for (Ctl **pc = &ctls; *pc;) {
        Ctl *ctl = *pc;
        if (ctl->closed) {
            *pc = ctl->next;
            free(ctl);
        } else {
            pc = &ctl->next;
        }
    }
}

static bool flushed(void)
{
    for (Conn *c = conns; c; c = c->next)
        if (!c->closed && buf_size(&c->wbuf))
            return false;
    return true;
}

/* the command line becomes one string, "crisp-shim <container id>", as runtime.procs.set_process_title makes the
   Python shim's: written over our own argument area (argv[0] argv[1] argv[2] are contiguous), NULs after it and a
   last byte that is not NUL, which tells the kernel to show the area up to its first NUL */
static void set_title(char **argv)
{
    char *start = argv[0], *end = argv[2] + strlen(argv[2]) + 1;
    size_t room = (size_t)(end - start), first = strlen(argv[0]);
    if (argv[1] != start + first + 1 || argv[2] != argv[1] + strlen(argv[1]) + 1 || room < first + 3)
        return; /* not the layout execve makes: leave it */
    argv[1][-1] = ' '; /* "crisp-shim\0<id>\0<fd>\0" -> "crisp-shim <id>\0\0..\0 " */
    memset(argv[2], 0, strlen(argv[2]));
    end[-1] = ' ';
}

int main(int argc, char **argv)
{
    prctl(PR_SET_NAME, "crisp-shim", 0, 0, 0);
    if (argc == 2 && (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version"))) {
        printf("crisp-monitor %s\n", CRISP_VERSION);
        return 0;
    }
    if (argc != 3)
        bad_state("usage: crisp-shim <container id> <state fd>");
    char *end;
    errno = 0;
    long state_fd = strtol(argv[2], &end, 10);
    if (errno || *end || end == argv[2] || state_fd < 0 || state_fd > INT_MAX)
        bad_state("state fd %s", argv[2]);
    set_title(argv);

    /* SIGCHLD through a signalfd; the ignored ones stay ignored (only crispd's shutdown ends a shim) */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        bad_state("epoll_create1: %s", strerror(errno));
    load_state(argv[1], (int)state_fd);
    sigw.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigw.fd < 0)
        bad_state("signalfd: %s", strerror(errno));
    watch_set(&sigw, EPOLLIN);
    watch_set(&listener, EPOLLIN);
    for (int i = 0; i < n_outputs; i++)
        watch_set(&outputs[i].w, EPOLLIN);
    logmsg("crisp-monitor %s watching container %s (%s, init pid %d)", CRISP_VERSION, cfg.id, cstate, init_pid);
    /* handed over for a container that has exited already: waiters get the status, attachers the exit frame */
    if (has_status) {
        for (Conn *c = conns; c; c = c->next)
            if (c->waits)
                op_wait(c), c->waits = 0;
        attachers_exited();
    }
    reap(); /* the init may have exited during the hand-off */
    for (Conn *c = conns; c; c = c->next)
        conn_flush(c);

    struct epoll_event events[64];
    for (;;) {
        int timeout = scratch_used ? TRIM_AFTER_MS : -1;
        if (exiting) {
            long long left = exit_deadline - now_ns(CLOCK_MONOTONIC);
            timeout = left <= 0 ? 0 : (int)(left / 1000000) + 1;
        }
        int n = epoll_wait(epfd, events, sizeof events / sizeof *events, timeout);
        if (n < 0 && errno != EINTR) {
            logmsg("epoll_wait failed: %s", strerror(errno));
            exit(1);
        }
        if (n == 0 && scratch_used && !exiting)
            trim();
        for (int i = 0; i < n; i++) {
            Watch *w = events[i].data.ptr;
            uint32_t ev = events[i].events;
            switch (w->kind) {
            case K_LISTENER:
                on_accept();
                break;
            case K_SIGNAL: {
                struct signalfd_siginfo si;
                while (read(sigw.fd, &si, sizeof si) == (ssize_t)sizeof si)
                    ;
                reap();
                break;
            }
            case K_OUTPUT:
                output_read((Output *)w, READS_PER_WAKEUP);
                break;
            case K_SINK:
                sink_flush();
                break;
            case K_CONN: {
                Conn *c = (Conn *)w;
                if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && buf_size(&c->wbuf))
                    conn_flush(c);
                if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && !c->closed && !c->paused)
                    conn_read(c);
                break;
            }
            case K_DELEG:
                deleg_read((Deleg *)w);
                break;
            case K_CTL:
                ctl_read((Ctl *)w);
                break;
            }
        }
        sweep();
        if (exiting && (flushed() || now_ns(CLOCK_MONOTONIC) >= exit_deadline))
            exit(0);
    }
}
