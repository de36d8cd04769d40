/*
 * ambient-redirect-cni: a chained CNI plugin (spec 1.1; configs of 0.3.0 to 1.1.0) that
 * holds a pod's sandbox creation until the node agent has enrolled it. A thin relay:
 * VERSION is answered here; ADD, DEL, CHECK, STATUS and GC go to the agent over a Unix
 * socket (the CNI_* environment and the raw stdin, length-prefixed), and the agent's
 * stdout and exit code become ours once they pass the checks below. All the deciding
 * (netconf, prevResult, enrollment) happens in the agent.
 *
 * When the agent cannot be asked (no socket, refused, timed out, a broken reply):
 *   DEL    succeeds (idempotent; nothing to undo here).
 *   GC     succeeds (what it would collect lives in the agent's memory).
 *   STATUS succeeds when the namespace list can be read (ADD can still decide), else
 *          error 50 (not available).
 *   ADD    fails with code 11 (try again later) for a pod whose namespace is listed in the
 *          agent's namespace file (ambient), or when that file cannot be read (fail
 *          closed); every other pod passes, with prevResult unchanged.
 *   CHECK  the same decision; success prints nothing.
 *
 * The contract kept for every input (docs/cni.md, checked by test/build/cni-fuzz.test.ts):
 * exit 0 or 1, never a signal; on 1 stdout is one CNI error object, valid JSON in UTF-8;
 * on 0 stdout is ADD's result (prevResult byte for byte, or a bare result), VERSION's
 * answer, or nothing; DEL always exits 0. Nothing is written to stderr.
 *
 * Built static (the host may have no Node.js, nor the libc we were built against).
 * Parsing is minimal on purpose but strict: the whole input must be UTF-8 JSON, and only
 * the top-level members cniVersion, prevResult and our three settings are used (matched
 * on their raw key bytes, the last of duplicates wins, as in src/cni/json-members.ts).
 *
 * Wire format (all integers unsigned 32-bit big-endian):
 *   request  total | count | count x (len, "KEY=VALUE") | len, stdin
 *   reply    total | exit code | stdout bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
#define CNI_ERR_INCOMPATIBLE_VERSION 1
#define CNI_ERR_INVALID_ENV 4
#define CNI_ERR_IO 5
#define CNI_ERR_DECODE 6
#define CNI_ERR_INVALID_CONFIG 7
#define CNI_ERR_TRY_AGAIN 11
#define CNI_ERR_NOT_AVAILABLE 50

#define LATEST_VERSION "1.1.0"
static const char *const supported_versions[] = { "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0" };

extern char **environ;

struct span {
	const char *p;
	size_t n;
};

/* --- UTF-8 ---------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 when invalid (overlong,
 * surrogate, above U+10FFFF, truncated). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	if (p[0] < 0x80)
		return 1;
	size_t len;
	unsigned min;
	unsigned cp;
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		len = 2;
		cp = p[0] & 0x1f;
		min = 0x80;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		len = 3;
		cp = p[0] & 0x0f;
		min = 0x800;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		len = 4;
		cp = p[0] & 0x07;
		min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

static int utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t l = utf8_seq(p + i, n - i);
		if (l == 0)
			return 0;
		i += l;
	}
	return 1;
}

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

/* A JSON string of arbitrary bytes: escapes what JSON needs, and an invalid UTF-8 byte
 * (from the environment, a truncated message) becomes U+FFFD, so the output stays UTF-8. */
static void put_json_string(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);
	fputc('"', f);
	for (size_t i = 0; i < n;) {
		unsigned char c = p[i];
		if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", c);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			fprintf(f, "\\u%04x", c);
			i++;
		} else {
			size_t l = utf8_seq(p + i, n - i);
			if (l == 0) {
				fputs("\\ufffd", f);
				i++;
			} else {
				fwrite(p + i, 1, l, f);
				i += l;
			}
		}
	}
	fputc('"', f);
}

/* The configuration's cniVersion when we support it, else ours (the token, unquoted). */
static const char *out_version = "1.0.0";

/* Prints a CNI error object on stdout and exits 1 (the spec's failure). */
__attribute__((noreturn, format(printf, 3, 4))) static void fail(int code, const char *details, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stdout, "{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":", out_version, code);
	put_json_string(stdout, msg);
	if (details) {
		fputs(",\"details\":", stdout);
		put_json_string(stdout, details);
	}
	fputs("}\n", stdout);
	fflush(stdout);
	exit(1);
}

/* --- a small strict JSON scanner: spans of the top-level members ----------------------- */

static const char *skip_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

static int is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* p at the opening quote; returns just past the closing one, or NULL (bad escape, a
 * control character, unterminated). */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\') {
			if (++p >= end)
				return NULL;
			if (*p == 'u') {
				if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
					return NULL;
				p += 4;
			} else if (!strchr("\"\\/bfnrt", *p) || *p == 0) {
				return NULL;
			}
			continue;
		}
		if (*p == '"')
			return p + 1;
		if ((unsigned char)*p < 0x20)
			return NULL;
	}
	return NULL;
}

static const char *skip_digits(const char *p, const char *end)
{
	const char *start = p;
	while (p < end && *p >= '0' && *p <= '9')
		p++;
	return p > start ? p : NULL;
}

/* -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static const char *skip_number(const char *p, const char *end)
{
	if (p < end && *p == '-')
		p++;
	if (p >= end)
		return NULL;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		p = skip_digits(p, end);
	else
		return NULL;
	if (p < end && *p == '.') {
		p = skip_digits(p + 1, end);
		if (!p)
			return NULL;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		p = skip_digits(p, end);
	}
	return p;
}

static const char *skip_literal(const char *p, const char *end, const char *word)
{
	size_t n = strlen(word);
	return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
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
	if (*p == 't')
		return skip_literal(p, end, "true");
	if (*p == 'f')
		return skip_literal(p, end, "false");
	if (*p == 'n')
		return skip_literal(p, end, "null");
	return skip_number(p, end);
}

struct member {
	const char *key; /* matched against the raw key bytes */
	struct span *out;
};

/* Fills the spans of the wanted top-level members (the last of duplicates wins); -1 when
 * the input is not exactly one JSON object. */
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

/* Reads fd to its end, at most max bytes (EFBIG beyond). */
static char *read_fd(int fd, size_t max, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	if (!buf)
		return NULL;
	for (;;) {
		if (n == cap) {
			if (cap > max) {
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
	if (n > max) {
		free(buf);
		errno = EFBIG;
		return NULL;
	}
	buf[n] = 0;
	*len = n;
	return buf;
}

/* The value of KEY in CNI_ARGS ("K1=V1;K2=V2") copied into buf: 1 found, 0 absent or
 * empty, -1 too long. Read as the agent reads it (src/cni/request.ts, parseCniArgs): a term
 * splits at its first '=', terms without one are skipped, the last of duplicates wins. */
static int cni_arg(const char *key, char *buf, size_t size)
{
	const char *args = getenv("CNI_ARGS");
	size_t klen = strlen(key);
	const char *val = NULL;
	size_t vlen = 0;
	while (args && *args) {
		const char *semi = strchr(args, ';');
		size_t len = semi ? (size_t)(semi - args) : strlen(args);
		if (len > klen && args[klen] == '=' && memcmp(args, key, klen) == 0) {
			val = args + klen + 1;
			vlen = len - klen - 1;
		}
		args = semi ? semi + 1 : NULL;
	}
	if (!val || vlen == 0)
		return 0;
	if (vlen >= size)
		return -1;
	memcpy(buf, val, vlen);
	buf[vlen] = 0;
	return 1;
}

/* 1: the namespace is listed (ambient); 0: not listed; -1: the file cannot be read. The
 * read is bounded: only a regular file (a FIFO or a device is refused; O_NONBLOCK so that
 * opening a FIFO cannot block), at most MAX_NS_FILE bytes. */
static int namespace_listed(const char *file, const char *ns, char *why, size_t whysize)
{
	int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(why, whysize, "%s: %s", file, strerror(errno));
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		snprintf(why, whysize, "%s: not a regular file", file);
		close(fd);
		return -1;
	}
	if (st.st_size > (off_t)MAX_NS_FILE) {
		snprintf(why, whysize, "%s: larger than %u bytes", file, MAX_NS_FILE);
		close(fd);
		return -1;
	}
	size_t n = 0;
	char *buf = read_fd(fd, MAX_NS_FILE, &n);
	int err = errno;
	close(fd);
	if (!buf) {
		snprintf(why, whysize, "%s: %s", file, strerror(err));
		return -1;
	}
	size_t nslen = strlen(ns);
	int found = 0;
	for (const char *p = buf, *end = buf + n; p < end && !found;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (len > 0 && p[len - 1] == '\r')
			len--;
		found = len == nslen && memcmp(p, ns, len) == 0;
		p = nl ? nl + 1 : end;
	}
	free(buf);
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
static int relay(const char *path, const char *input, size_t inlen, int timeout_ms, uint32_t *code, char **out,
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
	*code = get_u32(head + 4);
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

enum command { CMD_ADD, CMD_DEL, CMD_CHECK, CMD_STATUS, CMD_GC };

/* The agent's answer is used only when it keeps the contract: UTF-8; on success, ADD's
 * stdout is one JSON object and the other commands print nothing; on failure, stdout is
 * one JSON object with a numeric "code" and a string "msg". Anything else is a broken
 * answer (the agent cannot be asked). */
static int answer_ok(enum command cmd, uint32_t code, const char *out, size_t outlen)
{
	if (!utf8_valid(out, outlen))
		return 0;
	if (code == 0 && cmd != CMD_ADD)
		return outlen == 0 || skip_ws(out, out + outlen) == out + outlen;
	struct span c = { 0 }, m = { 0 }, v = { 0 };
	struct member want[] = { { "code", &c }, { "msg", &m }, { "cniVersion", &v } };
	if (scan_object(out, outlen, want, code == 0 ? 0 : 3) < 0)
		return 0;
	if (code == 0)
		return 1;
	return c.n > 0 && c.p[0] >= '0' && c.p[0] <= '9' && m.n > 0 && m.p[0] == '"';
}

/* ADD's answer when we add nothing: prevResult byte for byte, or a bare result. */
__attribute__((noreturn)) static void pass_through(enum command cmd, struct span prev)
{
	if (cmd != CMD_ADD)
		exit(0); /* CHECK: success prints nothing */
	if (prev.n > 0) {
		fwrite(prev.p, 1, prev.n, stdout);
		fputc('\n', stdout);
	} else {
		fprintf(stdout, "{\"cniVersion\":\"%s\"}\n", out_version);
	}
	fflush(stdout);
	exit(0);
}

int main(void)
{
	const char *cmdname = getenv("CNI_COMMAND");
	if (!cmdname || !*cmdname)
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: CNI_COMMAND is not set");
	if (strcmp(cmdname, "VERSION") == 0) {
		fputs("{\"cniVersion\":\"" LATEST_VERSION "\",\"supportedVersions\":[", stdout);
		for (size_t i = 0; i < sizeof(supported_versions) / sizeof(supported_versions[0]); i++)
			fprintf(stdout, "%s\"%s\"", i ? "," : "", supported_versions[i]);
		fputs("]}\n", stdout);
		return 0;
	}
	enum command cmd;
	if (strcmp(cmdname, "ADD") == 0)
		cmd = CMD_ADD;
	else if (strcmp(cmdname, "DEL") == 0)
		cmd = CMD_DEL;
	else if (strcmp(cmdname, "CHECK") == 0)
		cmd = CMD_CHECK;
	else if (strcmp(cmdname, "STATUS") == 0)
		cmd = CMD_STATUS;
	else if (strcmp(cmdname, "GC") == 0)
		cmd = CMD_GC;
	else
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: unknown CNI_COMMAND \"%.64s\"", cmdname);
	int del = cmd == CMD_DEL;

	size_t inlen = 0;
	char *input = read_fd(0, MAX_INPUT, &inlen);
	if (!input) {
		if (del)
			return 0;
		fail(CNI_ERR_IO, strerror(errno), "ambient-redirect-cni: cannot read the network configuration on stdin");
	}
	struct span version = { 0 }, prev = { 0 }, sock = { 0 }, nsfile = { 0 }, timeout = { 0 };
	struct member want[] = {
		{ "cniVersion", &version }, { "prevResult", &prev },   { "socketPath", &sock },
		{ "namespacesFile", &nsfile }, { "timeoutMs", &timeout },
	};
	if (!utf8_valid(input, inlen) || scan_object(input, inlen, want, sizeof(want) / sizeof(want[0])) < 0) {
		if (del)
			return 0;
		fail(CNI_ERR_DECODE, NULL, "ambient-redirect-cni: the network configuration on stdin is not a JSON object in UTF-8");
	}
	char vbuf[16];
	int hasv = plain_string(version, vbuf, sizeof(vbuf));
	if (hasv > 0) {
		const char *known = NULL;
		for (size_t i = 0; i < sizeof(supported_versions) / sizeof(supported_versions[0]); i++)
			if (strcmp(vbuf, supported_versions[i]) == 0)
				known = supported_versions[i];
		if (!known) {
			if (del)
				return 0;
			out_version = LATEST_VERSION;
			fail(CNI_ERR_INCOMPATIBLE_VERSION, NULL,
			     "ambient-redirect-cni: cniVersion %s is not supported (0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)", vbuf);
		}
		out_version = known;
	} else if (version.n > 0) {
		if (del)
			return 0;
		out_version = LATEST_VERSION;
		fail(CNI_ERR_INCOMPATIBLE_VERSION, NULL, "ambient-redirect-cni: cniVersion is not a version string");
	}
	/* prevResult: an object, or absent (null counts as absent, as in the agent). */
	if (prev.n == 4 && memcmp(prev.p, "null", 4) == 0)
		prev.n = 0;
	if (prev.n > 0 && prev.p[0] != '{' && (cmd == CMD_ADD || cmd == CMD_CHECK))
		fail(CNI_ERR_DECODE, NULL, "ambient-redirect-cni: prevResult is not an object");

	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
	char ns_path[4096] = DEFAULT_NS_FILE;
	if (plain_string(sock, sock_path, sizeof(sock_path)) < 0 || plain_string(nsfile, ns_path, sizeof(ns_path)) < 0) {
		if (del)
			return 0;
		fail(CNI_ERR_INVALID_CONFIG, NULL, "ambient-redirect-cni: socketPath and namespacesFile must be plain, non-empty strings");
	}
	int timeout_ms = DEFAULT_TIMEOUT_MS;
	if (timeout.n > 0) {
		char num[16];
		long v = -1;
		if (timeout.n < sizeof(num)) {
			memcpy(num, timeout.p, timeout.n);
			num[timeout.n] = 0;
			char *e;
			errno = 0;
			v = strtol(num, &e, 10);
			if (*e || errno)
				v = -1;
		}
		if (v < 1 || v > 600000) {
			if (del)
				return 0;
			fail(CNI_ERR_INVALID_CONFIG, NULL, "ambient-redirect-cni: timeoutMs must be an integer in 1..600000");
		}
		timeout_ms = (int)v;
	}
	if (del && timeout_ms > DEL_TIMEOUT_MS)
		timeout_ms = DEL_TIMEOUT_MS;

	uint32_t code = 0;
	char *out = NULL;
	size_t outlen = 0;
	char why[600];
	if (relay(sock_path, input, inlen, timeout_ms, &code, &out, &outlen, why, sizeof(why)) == 0) {
		if (del)
			return 0; /* DEL succeeds, and prints nothing, whatever the agent says */
		if (answer_ok(cmd, code, out, outlen)) {
			if (code == 0 && cmd != CMD_ADD)
				return 0;
			if (write_all(1, out, outlen) < 0)
				return 1;
			return code == 0 ? 0 : 1; /* never the code itself: 256 would exit 0 */
		}
		snprintf(why, sizeof(why), "a broken answer from %s (exit code %u, %zu bytes)", sock_path, code, outlen);
	}
	if (del || cmd == CMD_GC)
		return 0;

	/* The agent cannot be asked: decide from the namespace file it keeps. */
	char nswhy[600];
	if (cmd == CMD_STATUS) {
		if (namespace_listed(ns_path, "", nswhy, sizeof(nswhy)) >= 0)
			return 0;
		fail(CNI_ERR_NOT_AVAILABLE, why,
		     "ambient-redirect agent unreachable and its namespace list is unreadable (%s): ADD cannot decide", nswhy);
	}
	char ns[256];
	int has = cni_arg("K8S_POD_NAMESPACE", ns, sizeof(ns));
	if (has == 0)
		pass_through(cmd, prev); /* not a Kubernetes pod: not ours to hold */
	if (has < 0)
		fail(CNI_ERR_INVALID_ENV, NULL, "ambient-redirect-cni: K8S_POD_NAMESPACE in CNI_ARGS is too long");
	int listed = namespace_listed(ns_path, ns, nswhy, sizeof(nswhy));
	if (listed == 0)
		pass_through(cmd, prev);
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
