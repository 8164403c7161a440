/*
 * hotpoll.c - EXPERIMENT (EchoKit, fourth session), a copy of ../shared/bench/baselines/epoll.c:
 * a connection that just had traffic is taken out of the epoll set ("hot") and polled with recv()
 * directly until it has been quiet for HOT_COLD_US (env, default 2000 us), then put back. A socket
 * in no epoll set and with no blocked reader has no waiter, so the peer's send skips
 * sock_def_readable's wake-up path (ep_poll_callback and its irq-save lock, ~5 % of echoload's
 * CPU here). Question: does that lower the client's cost per message enough to beat C epoll?
 *
 * Original description follows.
 *
 * usage: epoll PORT [--greet]
 *   --greet  send the three tutorial greeting lines (181 bytes) on accept.
 *
 * Per readable event it reads once into one shared 64 KiB buffer and writes
 * the bytes straight back. If the socket does not take everything, the rest
 * is copied into a per-connection pending buffer, the fd is switched from
 * EPOLLIN to EPOLLOUT (so no more reading until it drains), and reading is
 * resumed once the pending bytes are written. accept4(SOCK_NONBLOCK),
 * TCP_NODELAY, SO_REUSEADDR, backlog 4096. Payloads are never printed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define BACKLOG 4096
#define MAX_EVENTS 1024
#define ACCEPT_BATCH 256

static const char GREETING[] =
    "Hello Client , I have received your connection. And now I will assign a handler for you\n"
    "Greetings! I am your connection handler\n"
    "Now type something and i shall repeat what you type \n";

struct conn {
    uint64_t last_ns; /* last byte received, while hot */
    int hot_idx;      /* index in g_hot, or -1 */
    char *pend;    /* bytes read but not yet written back */
    uint32_t off;  /* first unsent byte in pend */
    uint32_t len;  /* end of unsent bytes in pend */
    uint32_t cap;
    uint8_t open;
};

static struct conn *g_conns; /* indexed by fd */
static size_t g_nconns;
static int g_ep;
static int g_greet;
static char g_buf[BUF_SIZE];
static int *g_hot;
static int g_nhot;
static uint64_t g_cold_ns = 2000000;

#include <time.h>
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void hot_remove(int fd)
{
    struct conn *c = &g_conns[fd];
    int i = c->hot_idx;
    if (i < 0)
        return;
    int last = g_hot[--g_nhot];
    g_hot[i] = last;
    g_conns[last].hot_idx = i;
    c->hot_idx = -1;
}

static void conn_close(int fd)
{
    struct conn *c = &g_conns[fd];
    hot_remove(fd);
    free(c->pend);
    memset(c, 0, sizeof *c);
    c->hot_idx = -1;
    close(fd); /* also removes it from the epoll set */
}

static int set_events(int fd, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.fd = fd};
    return epoll_ctl(g_ep, EPOLL_CTL_MOD, fd, &e);
}

/* Keep [p, p+n) for later; switch the fd to EPOLLOUT only. */
static int stash(int fd, const char *p, size_t n)
{
    struct conn *c = &g_conns[fd];
    size_t have = c->len - c->off;
    if (c->off > 0 && have > 0)
        memmove(c->pend, c->pend + c->off, have);
    c->off = 0;
    c->len = (uint32_t)have;
    if (have + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < have + n)
            cap *= 2;
        char *np = realloc(c->pend, cap);
        if (np == NULL)
            return -1;
        c->pend = np;
        c->cap = (uint32_t)cap;
    }
    memcpy(c->pend + c->len, p, n);
    c->len += (uint32_t)n;
    if (c->hot_idx >= 0) {
        hot_remove(fd);
        struct epoll_event e = {.events = EPOLLOUT, .data.fd = fd};
        return epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e);
    }
    return set_events(fd, EPOLLOUT);
}

/* Try to send; anything that does not fit is stashed. -1 means close. */
static int write_or_stash(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return stash(fd, p, n);
        } else {
            return -1;
        }
    }
    return 0;
}

static void make_hot(int fd)
{
    struct conn *c = &g_conns[fd];
    if (!c->open || c->hot_idx >= 0 || c->len > c->off)
        return;
    epoll_ctl(g_ep, EPOLL_CTL_DEL, fd, NULL);
    c->hot_idx = g_nhot;
    g_hot[g_nhot++] = fd;
    c->last_ns = now_ns();
}

static void on_readable(int fd)
{
    ssize_t n = recv(fd, g_buf, sizeof g_buf, 0);
    if (n > 0) {
        if (write_or_stash(fd, g_buf, (size_t)n) < 0)
            conn_close(fd);
        else
            make_hot(fd);
    } else if (n == 0) {
        conn_close(fd);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        conn_close(fd);
    }
}

static void on_writable(int fd)
{
    struct conn *c = &g_conns[fd];
    while (c->off < c->len) {
        ssize_t w = send(fd, c->pend + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w > 0) {
            c->off += (uint32_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return; /* still blocked; EPOLLOUT stays armed */
        } else {
            conn_close(fd);
            return;
        }
    }
    c->off = c->len = 0;
    /* Drained: give back big buffers, resume reading. */
    if (c->cap > BUF_SIZE) {
        free(c->pend);
        c->pend = NULL;
        c->cap = 0;
    }
    if (set_events(fd, EPOLLIN) < 0)
        conn_close(fd);
}

static void on_accept(int lfd)
{
    static int warned;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK && !warned) {
                perror("accept4");
                warned = 1;
            }
            return;
        }
        if ((size_t)fd >= g_nconns) {
            fprintf(stderr, "epoll: fd %d beyond table, dropping\n", fd);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            close(fd);
            continue;
        }
        g_conns[fd].open = 1;
        if (g_greet && write_or_stash(fd, GREETING, sizeof GREETING - 1) < 0)
            conn_close(fd);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [--greet]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--greet") == 0)
            g_greet = 1;
        else {
            fprintf(stderr, "unknown argument: %s\n", argv[i]);
            return 2;
        }
    }
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "bad port: %s\n", argv[1]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    g_nconns = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 22) ? (1u << 22) : (size_t)rl.rlim_cur;
    g_conns = calloc(g_nconns, sizeof *g_conns);
    g_hot = calloc(g_nconns, sizeof *g_hot);
    if (getenv("HOT_COLD_US"))
        g_cold_ns = strtoull(getenv("HOT_COLD_US"), NULL, 10) * 1000u;
    for (size_t i = 0; g_conns && i < g_nconns; i++)
        g_conns[i].hot_idx = -1;
    if (g_conns == NULL || g_hot == NULL) {
        perror("calloc");
        return 1;
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons((uint16_t)port);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    if (listen(lfd, BACKLOG) < 0) {
        perror("listen");
        return 1;
    }
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event le = {.events = EPOLLIN, .data.fd = lfd};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &le) < 0) {
        perror("epoll_ctl");
        return 1;
    }
    fprintf(stderr, "epoll: listening on port %d%s\n", port, g_greet ? " (greet)" : "");

    static struct epoll_event evs[MAX_EVENTS];
    for (;;) {
        uint64_t now = g_nhot ? now_ns() : 0;
        for (int i = 0; i < g_nhot;) {
            int fd = g_hot[i];
            struct conn *c = &g_conns[fd];
            ssize_t r = recv(fd, g_buf, sizeof g_buf, 0);
            if (r > 0) {
                c->last_ns = now;
                if (write_or_stash(fd, g_buf, (size_t)r) < 0)
                    conn_close(fd);
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                conn_close(fd);
            } else if (now - c->last_ns > g_cold_ns) {
                hot_remove(fd); /* quiet: back into the epoll set (ADD looks at it again) */
                struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
                if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &e) < 0)
                    conn_close(fd);
            }
            if (i < g_nhot && g_hot[i] == fd)
                i++;
        }
        int n = epoll_wait(g_ep, evs, MAX_EVENTS, g_nhot ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t ev = evs[i].events;
            if (fd == lfd) {
                on_accept(lfd);
                continue;
            }
            if (!g_conns[fd].open)
                continue; /* closed earlier in this batch */
            if (ev & EPOLLOUT) {
                on_writable(fd);
            } else if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                /* HUP/ERR: recv() reports EOF or the error and we close. */
                on_readable(fd);
            }
        }
    }
}
