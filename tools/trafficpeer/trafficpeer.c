/*
 * trafficpeer: the native ends of the live traffic benchmarks (harness/bench/traffic.ts,
 * harness/bench/inpod.ts), with the wire behaviour of harness/bench/traffic-peer.ts, so
 * that the figures measure the kernel's path and not a JavaScript event loop. Runs inside
 * one netns (`ip netns exec`, or --netns-fd).
 *
 *   trafficpeer serve --port P [--threads N]
 *       P: read a request, answer "200 ok\n", close (connections/s); P+1: echo
 *       (request/response); P+2: sink, answers the byte count when the sender closes its
 *       side (stream). Prints {"event":"listening"} once every socket listens.
 *   trafficpeer ztunnel --terminate T --listen L[,L...] [--direct] [--standby]
 *                       [--netns-fd N] [--threads N]
 *       The terminating ztunnel stand-in: transparent listeners on each L (IPv4 and IPv6,
 *       IP_TRANSPARENT, SO_MARK 0x539, SO_REUSEPORT, as ztunnel's) answer a captured
 *       connection whose original destination port (SO_ORIGINAL_DST after a REDIRECT,
 *       else the local address) is T..T+2 as the server would, and reset any other.
 *       --direct also serves T..T+2 plainly (the "direct" scenario, the in-pod ceiling),
 *       asking each connection its original destination as it asks a captured one
 *       (a direct one's is its local port; any other is reset). --netns-fd enters the
 *       netns at that inherited fd first (setns). --standby starts without the transparent
 *       listeners. Lines on stdin: "counts" -> {"event":"counts","relayed":0,
 *       "terminated":n,"direct":n,"refused":n,"cpuSeconds":s}; "release" closes the transparent listeners
 *       ({"event":"released"}); "listen" opens them ({"event":"listening"}). Exits at the
 *       end of stdin.
 *   trafficpeer crr|rr|stream --to IP --port P [--seconds S] [--warmup S] [--concurrency N]
 *                            [--rr-connections N]
 *       One workload from here; one JSON line on stdout, traffic-peer.ts's PeerResult:
 *       {"event":"result","workload",...,"count","seconds","rate","connections","errors",
 *       "synRetrans"}, and "cpuSeconds" (this process's CPU time, getrusage). crr runs
 *       --concurrency connect loops at once (threads), on P; rr ping-pongs on
 *       --rr-connections connections at once (default 1; a thread each), on P+1; stream
 *       on P+2.
 *   trafficpeer flood udp|syn --dev IF --dst-mac MAC --to IP --port P [--seconds S]
 *                   [--src IP] [--rate PPS]
 *       Small IPv4 frames written on IF as they are (AF_PACKET, batches of 64 by
 *       sendmmsg), as fast as possible or at PPS, for S seconds: udp = 64-byte frames (22
 *       bytes of payload), syn = 54-byte TCP SYNs; each frame a new source port. --src
 *       forges the source address (default IF's own). One JSON line: {"event":"flood",
 *       "kind","sent","errors","seconds","rate","cpuUser","cpuSystem"} (this process's
 *       CPU seconds, getrusage).
 *   trafficpeer syscall-cost [--count N]
 *       What one system call costs on this machine: N getppid calls (default 200,000), timed
 *       7 times; one JSON line {"event":"syscall-cost","nsPerCall":median,"runs":[...]}. A
 *       connection makes about ten calls at each end, so where they are dear a data path's
 *       share of a connection, and the ratios between data paths, shrink.
 *
 * Exit status: 0; 2 with a message on stderr for bad arguments; 1 for a failed syscall.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ZTUNNEL_MARK 0x539
#define MAX_LISTEN_PORTS 8
#define MAX_LISTENERS 32
#define MAX_THREADS 64
#define MESSAGE_BYTES 64
#define STREAM_CHUNK (256 * 1024)
#define TIMEOUT_S 5
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif

static const char REQUEST[] = "GET /\n";
static const char RESPONSE[] = "200 ok\n";

enum workload { W_CRR = 0, W_RR, W_STREAM, W_CAPTURED };
static const char *const WORKLOAD_NAME[] = {"crr", "rr", "stream"};

static const char *const USAGE =
    "usage: trafficpeer serve --port P [--threads N]\n"
    "       trafficpeer ztunnel --terminate T --listen L[,L...] [--direct] [--standby] [--netns-fd N] [--threads N]\n"
    "       trafficpeer crr|rr|stream --to IP --port P [--seconds S] [--warmup S] [--concurrency N] [--rr-connections N]\n"
    "       trafficpeer flood udp|syn --dev IF --dst-mac MAC --to IP --port P [--seconds S] [--src IP] [--rate PPS]\n"
    "       trafficpeer syscall-cost [--count N]\n";

static void usage_error(const char *fmt, ...) {
  va_list ap;
  fputs("trafficpeer: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputs("\n", stderr);
  fputs(USAGE, stderr);
  exit(2);
}

static void fail(const char *what) {
  fprintf(stderr, "trafficpeer: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* This process's CPU seconds (all threads): its own work and what the kernel did in its context. */
static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- arguments ------------------------------------------------------------------------- */

struct args {
  long port, terminate, threads, netns_fd, concurrency, rr_connections, rate, count;
  const char *dev, *dst_mac, *src;
  double seconds, warmup;
  const char *to;
  long listen[MAX_LISTEN_PORTS];
  int nlisten;
  int direct, standby;
};

static long int_arg(const char *name, const char *v, long min, long max) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || end == v || *end || n < min || n > max) usage_error("--%s must be an integer in %ld..%ld, got \"%s\"", name, min, max, v);
  return n;
}

/* A number in (0, max], or in [0, max] when zero is allowed. */
static double num_arg(const char *name, const char *v, int zero_ok, double max) {
  char *end;
  errno = 0;
  double n = strtod(v, &end);
  if (errno || end == v || *end || !(zero_ok ? n >= 0 : n > 0) || n > max)
    usage_error("--%s must be a number in %s0, %g], got \"%s\"", name, zero_ok ? "[" : "(", max, v);
  return n;
}

static void parse_listen(struct args *a, const char *v) {
  char buf[256];
  if (strlen(v) >= sizeof(buf)) usage_error("--listen: too long");
  strcpy(buf, v);
  a->nlisten = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (a->nlisten == MAX_LISTEN_PORTS) usage_error("--listen: at most %d ports", MAX_LISTEN_PORTS);
    a->listen[a->nlisten++] = int_arg("listen", tok, 1, 65535);
  }
  if (a->nlisten == 0) usage_error("--listen: name at least one port");
}

/* Flags each role accepts, as one string of names. */
static void parse_args(const char *role, const char *allowed, int argc, char **argv, struct args *a) {
  for (int i = 0; i < argc; i++) {
    const char *f = argv[i];
    if (strncmp(f, "--", 2) != 0) usage_error("%s: unexpected argument \"%s\"", role, f);
    const char *name = f + 2;
    char key[32];
    snprintf(key, sizeof(key), " %s ", name);
    if (!strstr(allowed, key)) usage_error("%s: unknown flag \"%s\"", role, f);
    if (!strcmp(name, "direct")) {
      a->direct = 1;
      continue;
    }
    if (!strcmp(name, "standby")) {
      a->standby = 1;
      continue;
    }
    if (i + 1 >= argc) usage_error("%s: %s needs a value", role, f);
    const char *v = argv[++i];
    if (!strcmp(name, "port")) a->port = int_arg(name, v, 1, 65533);
    else if (!strcmp(name, "terminate")) a->terminate = int_arg(name, v, 1, 65533);
    else if (!strcmp(name, "threads")) a->threads = int_arg(name, v, 1, MAX_THREADS);
    else if (!strcmp(name, "netns-fd")) a->netns_fd = int_arg(name, v, 0, 1 << 20);
    else if (!strcmp(name, "concurrency")) a->concurrency = int_arg(name, v, 1, 256);
    else if (!strcmp(name, "rr-connections")) a->rr_connections = int_arg(name, v, 1, 256);
    else if (!strcmp(name, "seconds")) a->seconds = num_arg(name, v, 0, 60);
    else if (!strcmp(name, "warmup")) a->warmup = num_arg(name, v, 1, 10);
    else if (!strcmp(name, "to")) a->to = v;
    else if (!strcmp(name, "dev")) a->dev = v;
    else if (!strcmp(name, "dst-mac")) a->dst_mac = v;
    else if (!strcmp(name, "src")) a->src = v;
    else if (!strcmp(name, "rate")) a->rate = int_arg(name, v, 1, 100000000);
    else if (!strcmp(name, "count")) a->count = int_arg(name, v, 1, 100000000);
    else if (!strcmp(name, "listen")) parse_listen(a, v);
  }
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/* --- servers: epoll workers ------------------------------------------------------------- */

struct listener {
  int fd; /* -1 when closed */
  int workload; /* W_CRR..W_STREAM: a plain server; W_CAPTURED: transparent */
  int family;
};

struct conn {
  int is_listener; /* 0: shares its first field with struct tag */
  int fd;
  int workload;
  unsigned long long bytes; /* stream: received */
  size_t outlen, outoff;
  char out[65536];
};

/* What epoll hands back: a listener or a connection (the first field tells). */
struct tag {
  int is_listener;
  void *p;
};

static struct listener listeners[MAX_LISTENERS];
static struct tag listener_tags[MAX_LISTENERS];
static int nlisteners;
static int epfds[MAX_THREADS];
static int nthreads;
static long terminate_port;
static unsigned long counts_terminated, counts_direct, counts_refused;
static unsigned rr_next; /* the worker the next request/response connection goes to */

static void count(unsigned long *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }

static void setint(int fd, int level, int name, int value, const char *what) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) < 0) fail(what);
}

static int open_listener(int family, long port, int transparent) {
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket");
  setint(fd, SOL_SOCKET, SO_REUSEADDR, 1, "setsockopt(SO_REUSEADDR)");
  if (family == AF_INET6) setint(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "setsockopt(IPV6_V6ONLY)");
  if (transparent) {
    /* As ztunnel's: SO_REUSEPORT, marked 0x539, transparent (foreign destinations). */
    setint(fd, SOL_SOCKET, SO_REUSEPORT, 1, "setsockopt(SO_REUSEPORT)");
    setint(fd, SOL_SOCKET, SO_MARK, ZTUNNEL_MARK, "setsockopt(SO_MARK)");
    if (family == AF_INET) setint(fd, SOL_IP, IP_TRANSPARENT, 1, "setsockopt(IP_TRANSPARENT)");
    else setint(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, "setsockopt(IPV6_TRANSPARENT)");
  }
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  socklen_t len;
  if (family == AF_INET) {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    len = sizeof(*s4);
  } else {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    len = sizeof(*s6);
  }
  if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
    fprintf(stderr, "trafficpeer: bind %s port %ld: %s\n", family == AF_INET ? "IPv4" : "IPv6", port, strerror(errno));
    exit(1);
  }
  if (listen(fd, 4096) < 0) fail("listen");
  return fd;
}

static void add_listener(int family, long port, int workload) {
  if (nlisteners == MAX_LISTENERS) {
    errno = ENOSPC;
    fail("too many listeners");
  }
  struct listener *l = &listeners[nlisteners];
  l->fd = open_listener(family, port, workload == W_CAPTURED);
  l->workload = workload;
  l->family = family;
  listener_tags[nlisteners] = (struct tag){.is_listener = 1, .p = l};
  for (int t = 0; t < nthreads; t++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = &listener_tags[nlisteners]};
    if (epoll_ctl(epfds[t], EPOLL_CTL_ADD, l->fd, &ev) < 0) fail("epoll_ctl(listener)");
  }
  nlisteners++;
}

static void close_listener(struct listener *l) {
  for (int t = 0; t < nthreads; t++) epoll_ctl(epfds[t], EPOLL_CTL_DEL, l->fd, NULL);
  close(l->fd);
  l->fd = -1;
}

/* The original destination port of a captured connection: REDIRECT's NAT, else local. */
static long original_port(int fd, int family) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockopt(fd, family == AF_INET ? SOL_IP : SOL_IPV6, SO_ORIGINAL_DST, &ss, &len) == 0 ||
      (len = sizeof(ss), getsockname(fd, (struct sockaddr *)&ss, &len) == 0)) {
    return ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port) : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  return -1;
}

static void reset_close(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

static void conn_close(struct conn *c) {
  close(c->fd);
  free(c);
}

static void accept_all(int epfd, struct listener *l) {
  for (;;) {
    int lfd = __atomic_load_n(&l->fd, __ATOMIC_RELAXED);
    if (lfd < 0) return;
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return; /* EAGAIN, or another worker took it, or the listener closed */
    int w = l->workload;
    if (w == W_CAPTURED) {
      long port = original_port(fd, l->family);
      if (port < terminate_port || port > terminate_port + 2) {
        count(&counts_refused);
        reset_close(fd);
        continue;
      }
      count(&counts_terminated);
      w = (int)(port - terminate_port);
    } else if (terminate_port > 0) {
      /* Asked as a captured one is (ztunnel asks every connection it accepts), so that a
       * direct connection and a captured one cost the stand-in the same: the in-pod
       * ceiling (harness/bench/inpod.ts) is a direct connection to this program. */
      if (original_port(fd, l->family) != terminate_port + w) {
        count(&counts_refused);
        reset_close(fd);
        continue;
      }
      count(&counts_direct);
    }
    if (w != W_STREAM) setint(fd, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)");
    struct conn *c = malloc(sizeof(*c));
    if (!c) {
      close(fd);
      continue;
    }
    c->is_listener = 0;
    c->fd = fd;
    c->workload = w;
    c->bytes = 0;
    c->outlen = c->outoff = 0;
    /* A request/response connection lives the whole run: they go to the workers in turn,
     * so that N connections are served evenly whichever worker woke for the accept (left
     * to that, 4 connections on 2 workers split 4/0 as often as 2/2, and the rate with it). */
    int to = w == W_RR ? epfds[__atomic_fetch_add(&rr_next, 1, __ATOMIC_RELAXED) % (unsigned)nthreads] : epfd;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(to, EPOLL_CTL_ADD, fd, &ev) < 0) conn_close(c);
  }
}

/* Writes what is pending; 1 when all of it went, 0 when the socket is full, -1 on error. */
static int flush_out(struct conn *c) {
  while (c->outoff < c->outlen) {
    ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    c->outoff += (size_t)n;
  }
  c->outoff = c->outlen = 0;
  return 1;
}

/* One readiness event on a connection; returns 0 when the connection is done. */
static int serve_conn(int epfd, struct conn *c, uint32_t events) {
  char buf[65536];
  if (c->outlen) {
    int r = flush_out(c);
    if (r < 0) return 0;
    if (r == 0) return 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
  }
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return 1;
  for (;;) {
    ssize_t n = read(c->fd, c->workload == W_RR ? c->out : buf, c->workload == W_RR ? sizeof(c->out) : sizeof(buf));
    if (n < 0) return errno == EAGAIN ? 1 : 0;
    if (n == 0) {
      if (c->workload == W_STREAM) {
        char reply[32];
        int len = snprintf(reply, sizeof(reply), "%llu\n", c->bytes);
        if (write(c->fd, reply, (size_t)len) < 0) return 0;
      }
      return 0;
    }
    switch (c->workload) {
    case W_CRR:
      /* The response and the FIN: the server closes first, as traffic-peer.ts's. */
      if (write(c->fd, RESPONSE, sizeof(RESPONSE) - 1) < 0) return 0;
      return 0;
    case W_RR: {
      c->outlen = (size_t)n;
      c->outoff = 0;
      int r = flush_out(c);
      if (r < 0) return 0;
      if (r == 0) {
        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        return 1;
      }
      break;
    }
    default:
      c->bytes += (unsigned long long)n;
    }
  }
}

static void *worker(void *arg) {
  int epfd = *(int *)arg;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      struct tag *t = evs[i].data.ptr;
      if (t->is_listener) {
        accept_all(epfd, t->p);
        continue;
      }
      struct conn *c = evs[i].data.ptr;
      if (!serve_conn(epfd, c, evs[i].events)) conn_close(c);
    }
  }
  return NULL;
}

static void start_workers(int n) {
  nthreads = n;
  static pthread_t tids[MAX_THREADS];
  for (int t = 0; t < n; t++) {
    epfds[t] = epoll_create1(EPOLL_CLOEXEC);
    if (epfds[t] < 0) fail("epoll_create1");
  }
  for (int t = 0; t < n; t++) {
    errno = pthread_create(&tids[t], NULL, worker, &epfds[t]);
    if (errno) fail("pthread_create");
  }
}

static void plain_servers(long port) {
  for (int w = W_CRR; w <= W_STREAM; w++) add_listener(AF_INET, port + w, w);
}

static void transparent_listeners(const struct args *a) {
  for (int i = 0; i < a->nlisten; i++) {
    add_listener(AF_INET, a->listen[i], W_CAPTURED);
    add_listener(AF_INET6, a->listen[i], W_CAPTURED);
  }
}

static void say(const char *line) {
  fputs(line, stdout);
  fputc('\n', stdout);
  fflush(stdout);
}

static int do_serve(struct args *a) {
  if (!a->port) usage_error("serve: --port is required");
  start_workers(a->threads ? (int)a->threads : default_threads());
  plain_servers(a->port);
  printf("{\"event\":\"listening\",\"port\":%ld}\n", a->port);
  fflush(stdout);
  for (;;) pause();
}

static int do_ztunnel(struct args *a) {
  if (!a->terminate) usage_error("ztunnel: --terminate is required");
  if (!a->nlisten) usage_error("ztunnel: --listen is required");
  if (a->netns_fd >= 0) {
    /* Before any socket: every one opened below belongs to that netns. */
    if (setns((int)a->netns_fd, CLONE_NEWNET) < 0) fail("setns(--netns-fd)");
    close((int)a->netns_fd);
  }
  terminate_port = a->terminate;
  start_workers(a->threads ? (int)a->threads : default_threads());
  if (a->direct) plain_servers(a->terminate);
  int first_captured = nlisteners;
  int held = !a->standby;
  if (held) transparent_listeners(a);
  say("{\"event\":\"listening\"}");
  char line[128];
  while (fgets(line, sizeof(line), stdin)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!strcmp(line, "counts")) {
      printf("{\"event\":\"counts\",\"relayed\":0,\"terminated\":%lu,\"direct\":%lu,\"refused\":%lu,\"cpuSeconds\":%.6f}\n",
             __atomic_load_n(&counts_terminated, __ATOMIC_RELAXED), __atomic_load_n(&counts_direct, __ATOMIC_RELAXED), __atomic_load_n(&counts_refused, __ATOMIC_RELAXED),
             cpu_seconds());
      fflush(stdout);
    } else if (!strcmp(line, "release")) {
      for (int i = first_captured; i < nlisteners; i++)
        if (listeners[i].fd >= 0) close_listener(&listeners[i]);
      held = 0;
      say("{\"event\":\"released\"}");
    } else if (!strcmp(line, "listen")) {
      if (!held) {
        /* Reopened in the same slots: the tags the workers know stay valid. */
        int n = nlisteners;
        nlisteners = first_captured;
        transparent_listeners(a);
        if (nlisteners != n && n != first_captured) {
          errno = EINVAL;
          fail("listen: the listeners changed");
        }
        held = 1;
      }
      say("{\"event\":\"listening\"}");
    } else if (line[0]) {
      fprintf(stderr, "trafficpeer: unknown command \"%s\" (counts, release, listen)\n", line);
    }
  }
  return 0;
}

/* --- clients ------------------------------------------------------------------------- */

struct target {
  struct sockaddr_storage addr;
  socklen_t len;
};

static struct target target_of(const char *ip, long port) {
  struct target t;
  memset(&t, 0, sizeof(t));
  struct sockaddr_in *s4 = (struct sockaddr_in *)&t.addr;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&t.addr;
  if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    t.len = sizeof(*s4);
  } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons((uint16_t)port);
    t.len = sizeof(*s6);
  } else {
    usage_error("--to must be an IP address, got \"%s\"", ip);
  }
  return t;
}

/* A connected blocking socket with the connection timeout on every call, or -1. */
static int dial(const struct target *t, int nodelay) {
  int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket");
  struct timeval tv = {.tv_sec = TIMEOUT_S};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (nodelay) setint(fd, IPPROTO_TCP, TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)");
  if (connect(fd, (const struct sockaddr *)&t->addr, t->len) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

struct window {
  double from, until;
};

struct crr_loop {
  const struct target *t;
  struct window w;
  unsigned long count, connections, errors;
};

/* Connect, request, the whole response up to the server's FIN, close; until the window ends. */
static void *crr_loop(void *arg) {
  struct crr_loop *l = arg;
  char buf[64];
  while (now_s() < l->w.until) {
    l->connections++;
    int fd = dial(l->t, 1);
    if (fd < 0) {
      l->errors++;
      continue;
    }
    size_t got = 0;
    int ok = write_all(fd, REQUEST, sizeof(REQUEST) - 1) == 0;
    while (ok) {
      ssize_t n = read(fd, buf + got, sizeof(buf) - got);
      if (n < 0) ok = errno == EINTR;
      else if (n == 0) break;
      else if ((got += (size_t)n) == sizeof(buf)) ok = 0;
    }
    close(fd);
    if (!ok || got != sizeof(RESPONSE) - 1 || memcmp(buf, RESPONSE, got) != 0) {
      l->errors++;
      continue;
    }
    double t = now_s();
    if (t >= l->w.from && t < l->w.until) l->count++;
  }
  return NULL;
}

struct rr_loop {
  struct window w;
  int fd;
  unsigned long count;
  int err;
  const char *what;
};

/* One connection's ping-pong: a 64-byte message, the 64 bytes back; until the window ends. */
static void *rr_loop(void *arg) {
  struct rr_loop *l = arg;
  char msg[MESSAGE_BYTES], back[MESSAGE_BYTES];
  memset(msg, 0x62, sizeof(msg));
  for (;;) {
    if (write_all(l->fd, msg, sizeof(msg)) < 0) {
      l->err = errno;
      l->what = "rr: write";
      break;
    }
    for (size_t got = 0; got < sizeof(back);) {
      ssize_t n = read(l->fd, back + got, sizeof(back) - got);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        l->err = n == 0 ? ECONNRESET : errno;
        l->what = "rr: read";
        goto out;
      }
      got += (size_t)n;
    }
    double t = now_s();
    if (t >= l->w.from) l->count++;
    if (t >= l->w.until) break;
  }
out:
  close(l->fd);
  return NULL;
}

/* TcpExt TCPSynRetrans of this netns, or -1. */
static long syn_retransmits(void) {
  FILE *f = fopen("/proc/net/netstat", "r");
  if (!f) return -1;
  static char names[8192], values[8192];
  long out = -1;
  while (fgets(names, sizeof(names), f) && fgets(values, sizeof(values), f)) {
    if (strncmp(names, "TcpExt:", 7) != 0) continue;
    char *sn, *sv;
    char *n = strtok_r(names, " \n", &sn), *v = strtok_r(values, " \n", &sv);
    while (n && v) {
      if (!strcmp(n, "TCPSynRetrans")) out = atol(v);
      n = strtok_r(NULL, " \n", &sn);
      v = strtok_r(NULL, " \n", &sv);
    }
  }
  fclose(f);
  return out;
}

static void result(const char *workload, double count, double seconds, unsigned long connections, unsigned long errors, long syn0) {
  long syn1 = syn_retransmits();
  printf("{\"event\":\"result\",\"workload\":\"%s\",\"count\":%.0f,\"seconds\":%.6f,\"rate\":%.3f,\"connections\":%lu,\"errors\":%lu,\"synRetrans\":%ld,\"cpuSeconds\":%.6f}\n",
         workload, count, seconds, seconds > 0 ? count / seconds : 0, connections, errors, syn0 >= 0 && syn1 >= 0 ? syn1 - syn0 : 0, cpu_seconds());
  fflush(stdout);
}

static int do_client(const char *role, struct args *a) {
  if (!a->to) usage_error("%s: --to is required", role);
  if (!a->port) usage_error("%s: --port is required", role);
  long syn0 = syn_retransmits();
  double start = now_s();
  struct window w = {.from = start + a->warmup, .until = start + a->warmup + a->seconds};
  if (!strcmp(role, "crr")) {
    struct target t = target_of(a->to, a->port);
    struct crr_loop loops[256];
    pthread_t tids[256];
    for (long i = 0; i < a->concurrency; i++) {
      loops[i] = (struct crr_loop){.t = &t, .w = w};
      errno = pthread_create(&tids[i], NULL, crr_loop, &loops[i]);
      if (errno) fail("pthread_create");
    }
    unsigned long count = 0, connections = 0, errors = 0;
    for (long i = 0; i < a->concurrency; i++) {
      pthread_join(tids[i], NULL);
      count += loops[i].count;
      connections += loops[i].connections;
      errors += loops[i].errors;
    }
    result("crr", (double)count, w.until - w.from, connections, errors, syn0);
    return 0;
  }
  if (!strcmp(role, "rr")) {
    struct target t = target_of(a->to, a->port + 1);
    struct rr_loop loops[256];
    pthread_t tids[256];
    /* Every connection first, so the window finds them all ping-ponging. */
    for (long i = 0; i < a->rr_connections; i++) {
      loops[i] = (struct rr_loop){.w = w, .fd = dial(&t, 1)};
      if (loops[i].fd < 0) fail("rr: connect");
    }
    for (long i = 0; i < a->rr_connections; i++) {
      errno = pthread_create(&tids[i], NULL, rr_loop, &loops[i]);
      if (errno) fail("pthread_create");
    }
    unsigned long count = 0;
    for (long i = 0; i < a->rr_connections; i++) {
      pthread_join(tids[i], NULL);
      if (loops[i].err) {
        errno = loops[i].err;
        fail(loops[i].what);
      }
      count += loops[i].count;
    }
    result("rr", (double)count, w.until - w.from, (unsigned long)a->rr_connections, 0, syn0);
    return 0;
  }
  /* stream: bulk bytes until the window ends; the sink's count after our FIN is what counts. */
  struct target t = target_of(a->to, a->port + 2);
  int fd = dial(&t, 0);
  if (fd < 0) fail("stream: connect");
  static char chunk[STREAM_CHUNK];
  memset(chunk, 0x61, sizeof(chunk));
  unsigned long long written = 0, at_warm = 0;
  int warm = 0;
  for (;;) {
    double t = now_s();
    if (!warm && t >= w.from) {
      warm = 1;
      at_warm = written;
    }
    if (t >= w.until) break;
    ssize_t n = write(fd, chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("stream: write");
    }
    written += (unsigned long long)n;
  }
  if (shutdown(fd, SHUT_WR) < 0) fail("stream: shutdown");
  char reply[64];
  size_t got = 0;
  for (;;) {
    ssize_t n = read(fd, reply + got, sizeof(reply) - 1 - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("stream: read the sink's count");
    }
    if (n == 0 || (got += (size_t)n) == sizeof(reply) - 1) break;
  }
  double end = now_s();
  reply[got] = 0;
  char *stop;
  unsigned long long received = strtoull(reply, &stop, 10);
  if (stop == reply || (*stop != '\n' && *stop != 0)) {
    fprintf(stderr, "trafficpeer: stream: the sink answered \"%s\"\n", reply);
    return 1;
  }
  close(fd);
  result("stream", (double)(received - at_warm), end - w.from, 1, 0, syn0);
  return 0;
}

/* --- flood ------------------------------------------------------------------------------ */

#define FLOOD_BATCH 64
#define UDP_FRAME 64
#define SYN_FRAME 54

static uint16_t csum_fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const unsigned char *p, size_t n) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
  return sum;
}

/* Ethernet + IPv4 (+ UDP with 22 bytes of payload, or a TCP SYN) from `src` port `sport`. */
static size_t build_frame(unsigned char *f, int syn, const unsigned char *smac, const unsigned char *dmac, struct in_addr src, struct in_addr dst,
                          uint16_t sport, uint16_t dport) {
  size_t len = syn ? SYN_FRAME : UDP_FRAME;
  size_t l4 = len - 34;
  memset(f, 0, len);
  memcpy(f, dmac, 6);
  memcpy(f + 6, smac, 6);
  f[12] = 0x08;
  unsigned char *ip = f + 14, *t = f + 34;
  ip[0] = 0x45;
  ip[2] = (unsigned char)((20 + l4) >> 8);
  ip[3] = (unsigned char)(20 + l4);
  ip[6] = 0x40; /* DF */
  ip[8] = 64;
  ip[9] = syn ? IPPROTO_TCP : IPPROTO_UDP;
  memcpy(ip + 12, &src, 4);
  memcpy(ip + 16, &dst, 4);
  uint16_t c = csum_fold(csum_add(0, ip, 20));
  ip[10] = (unsigned char)(c >> 8);
  ip[11] = (unsigned char)c;
  t[0] = (unsigned char)(sport >> 8);
  t[1] = (unsigned char)sport;
  t[2] = (unsigned char)(dport >> 8);
  t[3] = (unsigned char)dport;
  if (syn) {
    t[4] = (unsigned char)(sport * 2654435761u >> 24); /* some sequence number */
    t[12] = 0x50; /* 20-byte header */
    t[13] = 0x02; /* SYN */
    t[14] = 0xff;
    t[15] = 0xff;
  } else {
    t[4] = (unsigned char)(l4 >> 8);
    t[5] = (unsigned char)l4;
    memset(t + 8, 0x66, l4 - 8);
  }
  /* The pseudo-header, then the segment: a receiver that checks must accept it. */
  unsigned char pseudo[12];
  memcpy(pseudo, ip + 12, 8);
  pseudo[8] = 0;
  pseudo[9] = ip[9];
  pseudo[10] = (unsigned char)(l4 >> 8);
  pseudo[11] = (unsigned char)l4;
  c = csum_fold(csum_add(csum_add(0, pseudo, 12), t, l4));
  if (!syn && c == 0) c = 0xffff;
  t[syn ? 16 : 6] = (unsigned char)(c >> 8);
  t[syn ? 17 : 7] = (unsigned char)c;
  return len;
}

static void parse_mac(const char *s, unsigned char *mac) {
  unsigned v[6];
  char tail;
  if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6) usage_error("--dst-mac must be a MAC address, got \"%s\"", s);
  for (int i = 0; i < 6; i++) {
    if (v[i] > 255) usage_error("--dst-mac must be a MAC address, got \"%s\"", s);
    mac[i] = (unsigned char)v[i];
  }
}

static int do_flood(const char *kind, struct args *a) {
  int syn = !strcmp(kind, "syn");
  if (!a->dev) usage_error("flood: --dev is required");
  if (!a->dst_mac) usage_error("flood: --dst-mac is required");
  if (!a->to) usage_error("flood: --to is required");
  if (!a->port) usage_error("flood: --port is required");
  unsigned char dmac[6], smac[6];
  parse_mac(a->dst_mac, dmac);
  struct in_addr dst, src;
  if (inet_pton(AF_INET, a->to, &dst) != 1) usage_error("flood: --to must be an IPv4 address, got \"%s\"", a->to);
  if (strlen(a->dev) >= IFNAMSIZ) usage_error("flood: --dev: no such interface \"%s\"", a->dev);
  unsigned ifindex = if_nametoindex(a->dev);
  if (!ifindex) usage_error("flood: --dev: no such interface \"%s\"", a->dev);
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
  if (fd < 0) fail("socket(AF_PACKET)");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  strcpy(ifr.ifr_name, a->dev);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) fail("SIOCGIFHWADDR");
  memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
  if (a->src) {
    if (inet_pton(AF_INET, a->src, &src) != 1) usage_error("flood: --src must be an IPv4 address, got \"%s\"", a->src);
  } else {
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, a->dev);
    ifr.ifr_addr.sa_family = AF_INET;
    if (u < 0 || ioctl(u, SIOCGIFADDR, &ifr) < 0) fail("SIOCGIFADDR (the device's IPv4 address)");
    src = ((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr;
    close(u);
  }
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)ifindex, .sll_halen = ETH_ALEN};
  memcpy(sll.sll_addr, dmac, 6);
  static unsigned char frames[FLOOD_BATCH][64];
  struct iovec iov[FLOOD_BATCH];
  struct mmsghdr msgs[FLOOD_BATCH];
  memset(msgs, 0, sizeof(msgs));
  unsigned long long sent = 0, errors = 0;
  uint16_t sport = 1024;
  double start = now_s(), until = start + a->seconds;
  for (;;) {
    double t = now_s();
    if (t >= until) break;
    if (a->rate && (double)sent > (t - start) * (double)a->rate) {
      struct timespec pause_ts = {0, 50000};
      nanosleep(&pause_ts, NULL);
      continue;
    }
    for (int i = 0; i < FLOOD_BATCH; i++) {
      iov[i].iov_base = frames[i];
      iov[i].iov_len = build_frame(frames[i], syn, smac, dmac, src, dst, sport, (uint16_t)a->port);
      sport = sport == 65535 ? 1024 : (uint16_t)(sport + 1);
      msgs[i].msg_hdr = (struct msghdr){.msg_name = &sll, .msg_namelen = sizeof(sll), .msg_iov = &iov[i], .msg_iovlen = 1};
    }
    int n = sendmmsg(fd, msgs, FLOOD_BATCH, 0);
    if (n < 0) {
      if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) fail("sendmmsg");
      errors += FLOOD_BATCH;
      continue;
    }
    sent += (unsigned long long)n;
    errors += (unsigned long long)(FLOOD_BATCH - n);
  }
  double seconds = now_s() - start;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"event\":\"flood\",\"kind\":\"%s\",\"sent\":%llu,\"errors\":%llu,\"seconds\":%.6f,\"rate\":%.3f,\"cpuUser\":%.6f,\"cpuSystem\":%.6f}\n", kind, sent, errors,
         seconds, (double)sent / seconds, (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6, (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
  fflush(stdout);
  close(fd);
  return 0;
}

/* --- syscall-cost ---------------------------------------------------------------------- */

#define SYSCALL_RUNS 7

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

static int do_syscall_cost(struct args *a) {
  double runs[SYSCALL_RUNS], sorted[SYSCALL_RUNS];
  for (int r = 0; r < SYSCALL_RUNS; r++) {
    double t0 = now_s();
    /* syscall(2), not getppid(3): no C library may answer it from a cache. */
    for (long i = 0; i < a->count; i++) syscall(SYS_getppid);
    runs[r] = sorted[r] = (now_s() - t0) * 1e9 / (double)a->count;
  }
  qsort(sorted, SYSCALL_RUNS, sizeof(sorted[0]), cmp_double);
  printf("{\"event\":\"syscall-cost\",\"count\":%ld,\"nsPerCall\":%.1f,\"runs\":[", a->count, sorted[SYSCALL_RUNS / 2]);
  for (int r = 0; r < SYSCALL_RUNS; r++) printf("%s%.1f", r ? "," : "", runs[r]);
  printf("]}\n");
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) usage_error("name a role");
  const char *role = argv[1];
  struct args a = {.netns_fd = -1, .seconds = 2, .warmup = 0.3, .concurrency = 4, .rr_connections = 1, .count = 200000};
  if (!strcmp(role, "serve")) {
    parse_args(role, " port threads ", argc - 2, argv + 2, &a);
    return do_serve(&a);
  }
  if (!strcmp(role, "ztunnel")) {
    parse_args(role, " terminate listen direct standby netns-fd threads ", argc - 2, argv + 2, &a);
    return do_ztunnel(&a);
  }
  for (int w = W_CRR; w <= W_STREAM; w++) {
    if (!strcmp(role, WORKLOAD_NAME[w])) {
      parse_args(role, " to port seconds warmup concurrency rr-connections ", argc - 2, argv + 2, &a);
      return do_client(role, &a);
    }
  }
  if (!strcmp(role, "flood")) {
    if (argc < 3 || (strcmp(argv[2], "udp") != 0 && strcmp(argv[2], "syn") != 0)) usage_error("flood: name udp or syn");
    parse_args("flood", " dev dst-mac to port seconds src rate ", argc - 3, argv + 3, &a);
    return do_flood(argv[2], &a);
  }
  if (!strcmp(role, "syscall-cost")) {
    parse_args(role, " count ", argc - 2, argv + 2, &a);
    return do_syscall_cost(&a);
  }
  usage_error("unknown role \"%s\" (serve, ztunnel, crr, rr, stream, flood, syscall-cost)", role);
  return 2;
}
