/*
 * rawframe: sends crafted Ethernet frames and sniffs what arrives, for the bypass-hunt
 * test (test/kernel/bypass-hunt.test.ts). Runs inside one netns (`ip netns exec`).
 *
 *   rawframe send <ifname> <hex-frame>...
 *       Writes each frame as is on the interface (AF_PACKET, no kernel stack on the way).
 *   rawframe sniff <ms> [--local] [<ifname>...]
 *       For <ms> milliseconds prints, one per line, `<where> <hex>` for every frame the
 *       named interfaces receive (not those they send: PACKET_OUTGOING is skipped) and,
 *       with --local, every IPv4/IPv6 packet the netns delivers to itself (raw sockets of
 *       each protocol below get a copy of what is delivered locally, after netfilter and
 *       routing). `ready` is printed once every socket is open, `done` at the end.
 *
 * Exit status: 0, or 2 with a message on stderr for bad arguments or a failed syscall.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SOCKS 64
#define MAX_FRAME 65536

static void die(const char *what, const char *arg) {
  fprintf(stderr, "rawframe: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", errno ? strerror(errno) : "invalid");
  exit(2);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int ifindex_of(const char *name) {
  unsigned idx = if_nametoindex(name);
  if (!idx) die("no such interface", name);
  return (int)idx;
}

static int do_send(int argc, char **argv) {
  if (argc < 2) {
    errno = 0;
    die("usage: send <ifname> <hex-frame>...", NULL);
  }
  int fd = socket(AF_PACKET, SOCK_RAW, 0);
  if (fd < 0) die("socket(AF_PACKET)", NULL);
  struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = ifindex_of(argv[0]), .sll_halen = ETH_ALEN};
  static unsigned char buf[MAX_FRAME];
  for (int i = 1; i < argc; i++) {
    size_t len = strlen(argv[i]);
    errno = 0;
    if (len % 2 || len / 2 > sizeof(buf) || len < 2 * ETH_HLEN) die("bad hex frame", argv[i]);
    for (size_t j = 0; j < len / 2; j++) {
      int hi = hexval(argv[i][2 * j]), lo = hexval(argv[i][2 * j + 1]);
      if (hi < 0 || lo < 0) die("bad hex frame", argv[i]);
      buf[j] = (unsigned char)(hi << 4 | lo);
    }
    memcpy(sll.sll_addr, buf, ETH_ALEN);
    if (sendto(fd, buf, len / 2, 0, (struct sockaddr *)&sll, sizeof(sll)) < 0) die("sendto", argv[i]);
  }
  printf("sent %d\n", argc - 1);
  return 0;
}

struct sniffer {
  int fd;
  char where[IF_NAMESIZE + 16];
};

static int add_raw(struct sniffer *s, int n, int family, int proto) {
  if (n >= MAX_SOCKS) {
    errno = 0;
    die("too many sockets", NULL);
  }
  int fd = socket(family, SOCK_RAW | SOCK_NONBLOCK, proto);
  if (fd < 0) die("socket(raw)", NULL);
  s[n].fd = fd;
  snprintf(s[n].where, sizeof(s[n].where), "local%d/%d", family == AF_INET ? 4 : 6, proto);
  return n + 1;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int do_sniff(int argc, char **argv) {
  if (argc < 1) {
    errno = 0;
    die("usage: sniff <ms> [--local] [<ifname>...]", NULL);
  }
  char *end;
  long ms = strtol(argv[0], &end, 10);
  errno = 0;
  if (*end || ms <= 0 || ms > 600000) die("bad duration", argv[0]);
  struct sniffer s[MAX_SOCKS];
  int n = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--local")) {
      /* IPv4: ICMP, IP-in-IP, TCP, UDP, IPv6-in-IPv4, GRE, ESP, SCTP. IPv6: the same with ICMPv6. */
      static const int p4[] = {1, 4, 6, 17, 41, 47, 50, 132};
      static const int p6[] = {4, 6, 17, 41, 47, 50, 58, 132};
      for (size_t j = 0; j < sizeof(p4) / sizeof(p4[0]); j++) n = add_raw(s, n, AF_INET, p4[j]);
      for (size_t j = 0; j < sizeof(p6) / sizeof(p6[0]); j++) n = add_raw(s, n, AF_INET6, p6[j]);
      continue;
    }
    if (n >= MAX_SOCKS) die("too many sockets", NULL);
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    if (fd < 0) die("socket(AF_PACKET)", NULL);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = ifindex_of(argv[i])};
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) die("bind", argv[i]);
    s[n].fd = fd;
    snprintf(s[n].where, sizeof(s[n].where), "if/%s", argv[i]);
    n++;
  }
  printf("ready\n");
  fflush(stdout);
  struct pollfd pfd[MAX_SOCKS];
  for (int i = 0; i < n; i++) pfd[i] = (struct pollfd){.fd = s[i].fd, .events = POLLIN};
  static unsigned char buf[MAX_FRAME];
  long long deadline = now_ms() + ms;
  for (;;) {
    long long left = deadline - now_ms();
    if (left <= 0) break;
    int r = poll(pfd, (nfds_t)n, (int)left);
    if (r < 0 && errno != EINTR) die("poll", NULL);
    for (int i = 0; r > 0 && i < n; i++) {
      if (!(pfd[i].revents & POLLIN)) continue;
      for (;;) {
        struct sockaddr_ll from;
        socklen_t fl = sizeof(from);
        ssize_t len = recvfrom(s[i].fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
        if (len < 0) break;
        if (!strncmp(s[i].where, "if/", 3) && from.sll_pkttype == PACKET_OUTGOING) continue;
        printf("%s ", s[i].where);
        for (ssize_t j = 0; j < len; j++) printf("%02x", buf[j]);
        printf("\n");
      }
    }
    fflush(stdout);
  }
  printf("done\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "send")) return do_send(argc - 2, argv + 2);
  if (argc >= 2 && !strcmp(argv[1], "sniff")) return do_sniff(argc - 2, argv + 2);
  fprintf(stderr, "usage: rawframe send <ifname> <hex-frame>... | rawframe sniff <ms> [--local] [<ifname>...]\n");
  return 2;
}
