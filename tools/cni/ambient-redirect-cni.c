/*
 * ambient-redirect-cni: a chained CNI plugin (spec 1.0) that holds a pod's sandbox
 * creation until the node agent has enrolled it. A thin relay: VERSION is answered here;
 * ADD, DEL and CHECK go to the agent over a Unix socket (the CNI_* environment and the
 * raw stdin, length-prefixed), and the agent's stdout and exit code become ours. All the
 * deciding (netconf, prevResult, enrollment) happens in the agent.
 *
 * When the agent cannot be asked (no socket, refused, timed out, a broken reply):
 *   DEL   succeeds (idempotent; nothing to undo here).
 *   ADD   fails with code 11 (try again later) for a pod whose namespace is listed in the
 *         agent's namespace file (ambient), or when that file cannot be read (fail
 *         closed); every other pod passes, with prevResult unchanged.
 *   CHECK the same decision; success prints nothing.
 *
 * Built static (the host may have no Node.js, nor the libc we were built against).
 * Parsing is minimal on purpose: only the top-level members of the netconf object are
 * looked at, and only cniVersion, prevResult and our three settings are used.
 *
 * Wire format (all integers unsigned 32-bit big-endian):
 *   request  total | count | count x (len, "KEY=VALUE") | len, stdin
 *   reply    total | exit code | stdout bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/ambient-redirect/cni.sock"
#define DEFAULT_NS_FILE "/var/lib/ambient-redirect/ambient-namespaces"
#define DEFAULT_TIMEOUT_MS 10000
/* DEL never waits long: it succeeds whatever the agent says. */
#define DEL_TIMEOUT_MS 2000
#define MAX_INPUT (1u << 20)
#define MAX_REPLY (4u << 20)
#define MAX_NS_FILE (4u << 20)
#define MAX_DEPTH 64

/* CNI error codes (SPEC.md, "Error"). */
#define CNI_ERR_INVALID_ENV 4
#define CNI_ERR_IO 5
#define CNI_ERR_DECODE 6
#define CNI_ERR_TRY_AGAIN 11

extern char **environ;

struct span {
	const char *p;
	size_t n;
};

/* --- output --------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void put_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static struct span cni_version; /* the raw JSON string token, quotes included */

static void put_version(FILE *f)
{
	if (cni_version.n > 0)
		fwrite(cni_version.p, 1, cni_version.n, f);
	else
		fputs("\"1.0.0\"", f);
}

/* Prints a CNI error object on stdout and exits 1 (the spec's failure). */
static void fail(int code, const char *details, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fputs("{\"cniVersion\":", stdout);
	put_version(stdout);
	fprintf(stdout, ",\"code\":%d,\"msg\":", code);
	put_json_string(stdout, msg);
	if (details) {
		fputs(",\"details\":", stdout);
		put_json_string(stdout, details);
	}
	fputs("}\n", stdout);
	fflush(stdout);
	exit(1);
}

/* --- a tiny JSON scanner: spans of the top-level members ------------------------------- */

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at the opening quote; returns just past the closing one, or NULL. */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\') {
			p++;
			continue;
		}
		if (*p == '"')
			return p + 1;
		if ((unsigned char)*p < 0x20)
			return NULL;
	}
	return NULL;
}

static const char *skip_value(const char *p, const char *end, int depth)
{
	p = skip_ws(p, end);
	if (p >= end || depth > MAX_DEPTH)
		return NULL;
	if (*p == '"')
		return skip_string(p, end);
	if (*p == '{' || *p == '[') {
		char close = *p == '{' ? '}' : ']';
		int object = *p == '{';
		p = skip_ws(p + 1, end);
		if (p < end && *p == close)
			return p + 1;
		for (;;) {
			if (object) {
				if (p >= end || *p != '"')
					return NULL;
				p = skip_string(p, end);
				if (!p)
					return NULL;
				p = skip_ws(p, end);
				if (p >= end || *p != ':')
					return NULL;
				p++;
			}
			p = skip_value(p, end, depth + 1);
			if (!p)
				return NULL;
			p = skip_ws(p, end);
			if (p < end && *p == ',') {
				p = skip_ws(p + 1, end);
				continue;
			}
			if (p < end && *p == close)
				return p + 1;
			return NULL;
		}
	}
	/* true, false, null, numbers */
	const char *start = p;
	while (p < end && (strchr("+-.0123456789eE", *p) || (*p >= 'a' && *p <= 'z')))
		p++;
	return p > start ? p : NULL;
}

struct member {
	const char *key; /* matched against the raw (unescaped-free) key */
	struct span *out;
};

/* Fills the spans of the wanted top-level members; -1 when the input is not one object. */
static int scan_object(const char *p, size_t n, struct member *want, size_t nwant)
{
	const char *end = p + n;
	p = skip_ws(p, end);
	if (p >= end || *p != '{')
		return -1;
	p = skip_ws(p + 1, end);
	if (p < end && *p == '}')
		return skip_ws(p + 1, end) == end ? 0 : -1;
	for (;;) {
		if (p >= end || *p != '"')
			return -1;
		const char *k = p + 1;
		p = skip_string(p, end);
		if (!p)
			return -1;
		size_t klen = (size_t)(p - 1 - k);
		p = skip_ws(p, end);
		if (p >= end || *p != ':')
			return -1;
		const char *v = skip_ws(p + 1, end);
		p = skip_value(v, end, 1);
		if (!p)
			return -1;
		for (size_t i = 0; i < nwant; i++)
			if (strlen(want[i].key) == klen && memcmp(want[i].key, k, klen) == 0) {
				want[i].out->p = v;
				want[i].out->n = (size_t)(p - v);
			}
		p = skip_ws(p, end);
		if (p < end && *p == ',') {
			p = skip_ws(p + 1, end);
			continue;
		}
		if (p < end && *p == '}')
			return skip_ws(p + 1, end) == end ? 0 : -1;
		return -1;
	}
}

/* A JSON string member without escapes, copied into buf; 0 when absent, -1 when unusable. */
static int plain_string(struct span s, char *buf, size_t size)
{
	if (s.n == 0)
		return 0;
	if (s.n < 2 || s.p[0] != '"' || s.n - 2 >= size || memchr(s.p + 1, '\\', s.n - 2))
		return -1;
	memcpy(buf, s.p + 1, s.n - 2);
	buf[s.n - 2] = 0;
	return buf[0] ? 1 : -1;
}

/* --- input ---------------------------------------------------------------------------- */

static char *read_fd(int fd, size_t max, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return NULL;
	for (;;) {
		if (n == cap) {
			if (cap >= max) {
				free(buf);
				errno = EFBIG;
				return NULL;
			}
			cap *= 2;
			char *nb = realloc(buf, cap + 1);
			if (!nb) {
				free(buf);
				return NULL;
			}
			buf = nb;
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			free(buf);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

/* The value of KEY in CNI_ARGS ("K1=V1;K2=V2"), copied into buf; 0 when absent. */
static int cni_arg(const char *key, char *buf, size_t size)
{
	const char *args = getenv("CNI_ARGS");
	size_t klen = strlen(key);
	while (args && *args) {
		const char *semi = strchr(args, ';');
		size_t len = semi ? (size_t)(semi - args) : strlen(args);
		if (len > klen && args[klen] == '=' && memcmp(args, key, klen) == 0) {
			size_t vlen = len - klen - 1;
			if (vlen >= size)
				return -1;
			memcpy(buf, args + klen + 1, vlen);
			buf[vlen] = 0;
			return 1;
		}
		args = semi ? semi + 1 : NULL;
	}
	return 0;
}

/* 1: the namespace is listed (ambient); 0: not listed; -1: the file cannot be read. */
static int namespace_listed(const char *file, const char *ns, char *why, size_t whysize)
{
	FILE *f = fopen(file, "re");
	if (!f) {
		snprintf(why, whysize, "%s: %s", file, strerror(errno));
		return -1;
	}
	char line[512];
	int found = 0;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (strcmp(line, ns) == 0) {
			found = 1;
			break;
		}
	}
	if (ferror(f)) {
		snprintf(why, whysize, "%s: read error", file);
		found = -1;
	}
	fclose(f);
	return found;
}

/* --- the relay ------------------------------------------------------------------------ */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to be ready for `events` until the deadline; 0 ok, -1 with errno set. */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		long long left = deadline - now_ms();
		if (left <= 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pfd = { .fd = fd, .events = events };
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r > 0)
			return 0;
	}
}

static int send_all(int fd, const char *p, size_t n, long long deadline)
{
	while (n > 0) {
		if (wait_fd(fd, POLLOUT, deadline) < 0)
			return -1;
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int recv_all(int fd, char *p, size_t n, long long deadline)
{
	while (n > 0) {
		if (wait_fd(fd, POLLIN, deadline) < 0)
			return -1;
		ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
		if (r == 0) {
			errno = ECONNRESET;
			return -1;
		}
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static void put_u32(char *p, uint32_t v)
{
	p[0] = (char)(v >> 24);
	p[1] = (char)(v >> 16);
	p[2] = (char)(v >> 8);
	p[3] = (char)v;
}

static uint32_t get_u32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Builds the request: the CNI_* environment and stdin. */
static char *encode_request(const char *input, size_t inlen, size_t *outlen)
{
	size_t total = 4 + 4 + 4 + inlen;
	uint32_t count = 0;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "CNI_", 4) == 0) {
			total += 4 + strlen(*e);
			count++;
		}
	char *buf = malloc(total);
	if (!buf)
		return NULL;
	char *p = buf;
	put_u32(p, (uint32_t)(total - 4));
	put_u32(p + 4, count);
	p += 8;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "CNI_", 4) == 0) {
			size_t n = strlen(*e);
			put_u32(p, (uint32_t)n);
			memcpy(p + 4, *e, n);
			p += 4 + n;
		}
	put_u32(p, (uint32_t)inlen);
	memcpy(p + 4, input, inlen);
	*outlen = total;
	return buf;
}

/* Asks the agent; 0 with its exit code and stdout, or -1 with why (errno-style text). */
static int relay(const char *path, const char *input, size_t inlen, int timeout_ms, int *code, char **out,
		 size_t *outlen, char *why, size_t whysize)
{
	long long deadline = now_ms() + timeout_ms;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path)) {
		snprintf(why, whysize, "socket path too long");
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(why, whysize, "socket: %s", strerror(errno));
		return -1;
	}
	size_t reqlen = 0;
	char *req = NULL;
	char head[8];
	int rc = -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 &&
	    !(errno == EAGAIN || errno == EINPROGRESS) ) {
		snprintf(why, whysize, "connect %s: %s", path, strerror(errno));
		goto out;
	}
	req = encode_request(input, inlen, &reqlen);
	if (!req) {
		snprintf(why, whysize, "out of memory");
		goto out;
	}
	if (send_all(fd, req, reqlen, deadline) < 0) {
		snprintf(why, whysize, "sending to %s: %s", path, strerror(errno));
		goto out;
	}
	if (recv_all(fd, head, sizeof(head), deadline) < 0) {
		if (errno == ETIMEDOUT)
			snprintf(why, whysize, "no answer from %s within %d ms", path, timeout_ms);
		else
			snprintf(why, whysize, "reading from %s: %s", path, strerror(errno));
		goto out;
	}
	uint32_t total = get_u32(head);
	if (total < 4 || total > MAX_REPLY) {
		snprintf(why, whysize, "a malformed answer from %s (length %u)", path, total);
		goto out;
	}
	*code = (int)get_u32(head + 4);
	*outlen = total - 4;
	*out = malloc(*outlen + 1);
	if (!*out) {
		snprintf(why, whysize, "out of memory");
		goto out;
	}
	if (recv_all(fd, *out, *outlen, deadline) < 0) {
		snprintf(why, whysize, "reading from %s: %s", path, strerror(errno));
		free(*out);
		*out = NULL;
		goto out;
	}
	rc = 0;
out:
	free(req);
	close(fd);
	return rc;
}

/* --- main ----------------------------------------------------------------------------- */

static void pass_through(int add, struct span prev)
{
	if (!add)
		exit(0); /* CHECK: success prints nothing */
	if (prev.n > 0) {
		fwrite(prev.p, 1, prev.n, stdout);
		fputc('\n', stdout);
	} else {
		fputs("{\"cniVersion\":", stdout);
		put_version(stdout);
		fputs("}\n", stdout);
	}
	fflush(stdout);
	exit(0);
}

int main(void)
{
	const char *cmd = getenv("CNI_COMMAND");
	if (!cmd || !*cmd)
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: CNI_COMMAND is not set");
	if (strcmp(cmd, "VERSION") == 0) {
		puts("{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]}");
		return 0;
	}
	int add = strcmp(cmd, "ADD") == 0, del = strcmp(cmd, "DEL") == 0, check = strcmp(cmd, "CHECK") == 0;

	size_t inlen = 0;
	char *input = read_fd(0, MAX_INPUT, &inlen);
	if (!input) {
		if (del)
			return 0;
		fail(CNI_ERR_IO, strerror(errno), "ambient-redirect-cni: cannot read the network configuration on stdin");
	}
	struct span prev = { 0 }, sock = { 0 }, nsfile = { 0 }, timeout = { 0 };
	struct member want[] = {
		{ "cniVersion", &cni_version }, { "prevResult", &prev }, { "socketPath", &sock },
		{ "namespacesFile", &nsfile },	 { "timeoutMs", &timeout },
	};
	if (scan_object(input, inlen, want, sizeof(want) / sizeof(want[0])) < 0) {
		if (del)
			return 0;
		cni_version.n = 0;
		fail(CNI_ERR_DECODE, NULL, "ambient-redirect-cni: the network configuration on stdin is not a JSON object");
	}
	if (cni_version.n > 0 && cni_version.p[0] != '"')
		cni_version.n = 0;
	if (!add && !del && !check)
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: unknown CNI_COMMAND \"%.64s\"", cmd);

	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
	char ns_path[4096] = DEFAULT_NS_FILE;
	if (plain_string(sock, sock_path, sizeof(sock_path)) < 0 || plain_string(nsfile, ns_path, sizeof(ns_path)) < 0) {
		if (del)
			return 0;
		fail(7, NULL, "ambient-redirect-cni: socketPath and namespacesFile must be plain, non-empty strings");
	}
	int timeout_ms = DEFAULT_TIMEOUT_MS;
	if (timeout.n > 0) {
		char num[32];
		if (timeout.n >= sizeof(num))
			fail(7, NULL, "ambient-redirect-cni: timeoutMs is not a number");
		memcpy(num, timeout.p, timeout.n);
		num[timeout.n] = 0;
		char *e;
		long v = strtol(num, &e, 10);
		if (*e || v < 1 || v > 600000) {
			if (del)
				return 0;
			fail(7, NULL, "ambient-redirect-cni: timeoutMs must be an integer in 1..600000");
		}
		timeout_ms = (int)v;
	}
	if (del && timeout_ms > DEL_TIMEOUT_MS)
		timeout_ms = DEL_TIMEOUT_MS;

	int code = 0;
	char *out = NULL;
	size_t outlen = 0;
	char why[600];
	if (relay(sock_path, input, inlen, timeout_ms, &code, &out, &outlen, why, sizeof(why)) == 0) {
		if (write_all(1, out, outlen) < 0 && !del)
			return 1;
		return del ? 0 : code;
	}
	if (del)
		return 0;

	/* The agent cannot be asked: decide from the namespace file it keeps. */
	char ns[256];
	int has = cni_arg("K8S_POD_NAMESPACE", ns, sizeof(ns));
	if (has == 0)
		pass_through(add, prev); /* not a Kubernetes pod: not ours to hold */
	if (has < 0)
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: K8S_POD_NAMESPACE in CNI_ARGS is too long");
	char nswhy[600];
	int listed = namespace_listed(ns_path, ns, nswhy, sizeof(nswhy));
	if (listed == 0)
		pass_through(add, prev);
	if (listed > 0)
		fail(CNI_ERR_TRY_AGAIN, why,
		     "ambient-redirect agent unreachable; namespace %s is ambient, so the pod must not start before it is "
		     "enrolled (the runtime retries)",
		     ns);
	fail(CNI_ERR_TRY_AGAIN, why,
	     "ambient-redirect agent unreachable and its namespace list is unreadable (%s): failing closed (the runtime "
	     "retries)",
	     nswhy);
	return 1;
}
