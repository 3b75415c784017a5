// Package admin serves the operator-facing listener every wxgate process
// has: /metrics, /healthz and /readyz, open to scrapers and probes, and the
// routes callers add (the API under /api/, the page under /ui/), which the
// mux guards against requests a web page makes a browser send. It is never
// the WeChat-facing listener.
package admin

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors,
// the base every wxgate process exports.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Options are what the admin endpoints report on.
type Options struct {
	Gatherer prometheus.Gatherer
	// Ready returns nil when the process can do its work, or an error
	// naming each part that cannot.
	Ready func() error
	// Pprof serves net/http/pprof under /debug/pprof/ (PPROF=true): for
	// profiling, never on by default. It requires Token when one is set.
	Pprof bool
	// Token is ADMIN_TOKEN: when set, /debug/pprof/ requires it (the
	// routes callers add wrap themselves with RequireToken); empty, the
	// guarded routes answer only requests for an IP address or localhost.
	Token string
	// Logger receives metric collection errors; nil discards them.
	Logger *slog.Logger
}

// Mux is the admin listener's router: an http.ServeMux, with routes ahead
// of it (HandleUncleaned) that get the request path exactly as it was sent.
// http.ServeMux cleans paths and redirects "/api/qrcodes/./image" to
// "/api/qrcodes/image": a route whose path segments carry data (a scene may
// be "." or "..") must see them before it does.
type Mux struct {
	*http.ServeMux
	uncleaned []uncleanedRoute
	token     string
	origin    *http.CrossOriginProtection
	logger    *slog.Logger
}

type uncleanedRoute struct {
	path string
	h    http.Handler
}

// HandleUncleaned serves requests whose escaped path is path, or starts
// with path + "/", with h, before the ServeMux sees (and cleans) them. h
// reads r.URL.EscapedPath() itself. Routes are added before serving.
func (m *Mux) HandleUncleaned(path string, h http.Handler) {
	m.uncleaned = append(m.uncleaned, uncleanedRoute{strings.TrimSuffix(path, "/"), h})
}

func (m *Mux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !open(r.URL.Path) {
		if code, why := m.refusal(r); code != 0 {
			m.logger.Warn("admin: request refused", "status", code, "why", why, "method", r.Method,
				"path", clip(r.URL.Path), "host", clip(r.Host), "remote", r.RemoteAddr)
			WriteError(w, code, why)
			return
		}
	}
	if len(m.uncleaned) > 0 && r.Method != http.MethodConnect && r.URL.Opaque == "" {
		p := r.URL.EscapedPath()
		for _, u := range m.uncleaned {
			if p == u.path || (strings.HasPrefix(p, u.path) && p[len(u.path)] == '/') {
				u.h.ServeHTTP(w, r)
				return
			}
		}
	}
	m.ServeMux.ServeHTTP(w, r)
}

// open reports the routes any Host and origin may reach: scrapers and
// healthchecks present no token, and what they show is no secret to
// whoever reaches the port. Every other route is guarded.
func open(path string) bool { return path == "/metrics" || path == "/healthz" || path == "/readyz" }

// refusal is the status and reason a guarded route refuses r with, or 0.
// A web page can make a browser send requests to a loopback or intranet
// address: forms and no-cors fetches cross-site, and, through a name it
// makes resolve here (DNS rebinding), requests it can read the answers of.
//   - Without a token, a Host that is a name other than localhost is
//     refused: a page cannot make an IP address or localhost its own.
//   - A cross-origin request that changes something is refused
//     (Sec-Fetch-Site, else Origin against Host); curl and scripts send
//     neither header and pass.
//   - An API body from a browser must not be of a type a page can send
//     cross-site without a preflight (text/plain, a form, multipart, none),
//     even from an old browser that sends neither header: such a body
//     passes only from a client that shows no sign of a browser (curl,
//     scripts), so `curl -d` keeps working.
func (m *Mux) refusal(r *http.Request) (int, string) {
	if m.token == "" && !addressedByIP(r.Host) {
		return http.StatusForbidden, "without ADMIN_TOKEN the admin listener answers requests for an IP address or localhost only (a page could make any other name resolve here); set ADMIN_TOKEN to use it by name"
	}
	if err := m.origin.Check(r); err != nil {
		return http.StatusForbidden, "cross-origin request refused: " + err.Error()
	}
	if strings.HasPrefix(r.URL.Path, "/api/") && r.ContentLength != 0 && r.Method != http.MethodGet && r.Method != http.MethodHead &&
		simpleBody(r) && fromBrowser(r) {
		return http.StatusUnsupportedMediaType, "Content-Type must be application/json (text/csv where a route takes CSV)"
	}
	return 0, ""
}

// simpleBody reports a body of a type a page can send cross-site with no
// preflight.
func simpleBody(r *http.Request) bool {
	switch t, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); t {
	case "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data":
		return true
	}
	return false
}

// fromBrowser reports a request that carries what browsers send and
// scripts do not: an Origin, a Referer, Fetch metadata, a Mozilla agent.
func fromBrowser(r *http.Request) bool {
	h := r.Header
	return h.Get("Origin") != "" || h.Get("Referer") != "" || h.Get("Sec-Fetch-Site") != "" || h.Get("Sec-Fetch-Mode") != "" ||
		strings.HasPrefix(h.Get("User-Agent"), "Mozilla/")
}

// clip bounds a request's text in a log line.
func clip(s string) string { return s[:min(len(s), 100)] }

// addressedByIP reports whether a request's Host (with or without a port)
// is an IP address or localhost; an HTTP/1.0 request without one is too.
func addressedByIP(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return host == "" || strings.EqualFold(host, "localhost")
}

// NewMux returns a mux with /metrics, /healthz and /readyz. Callers add
// their own routes (the analytics API, the QR codes, the page) to it; the
// mux guards them (see refusal).
func NewMux(o Options) *Mux {
	mux := http.NewServeMux()
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// One collector failing must not take every metric with it (a 500 on
	// /metrics hides the very signals an alert needs): serve what gathers,
	// and log the rest.
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
	}))
	if o.Pprof {
		pp := http.NewServeMux()
		pp.HandleFunc("/debug/pprof/", pprof.Index)
		pp.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		pp.HandleFunc("/debug/pprof/profile", pprof.Profile)
		pp.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		pp.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.Handle("/debug/pprof/", RequireToken(o.Token, pp))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if o.Ready != nil {
			if err := o.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
				return
			}
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return &Mux{ServeMux: mux, token: o.Token, origin: http.NewCrossOriginProtection(), logger: logger}
}

// RequireToken wraps h so that, when token is not empty, every request
// needs "Authorization: Bearer <token>" (compared in constant time) or the
// /ui/ page's session cookie, and gets 401 with a JSON error otherwise. The
// cookie stands for the token only where the page is the one asking (see
// pageRequest): its images and downloads, and its scripts' calls.
func RequireToken(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 && !(pageRequest(r) && HasSession(r, token)) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="wxgate"`)
			WriteError(w, http.StatusUnauthorized, "bearer token required (or, for the /ui/ page's own requests, its sign-in)")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// pageRequest reports a request the session cookie may authorize: a read,
// or a change the page's own script sends: same-origin (Fetch metadata, or
// an Origin naming this Host) with a JSON or CSV body, types another site
// cannot send without a preflight, which is never granted. The cookie is
// SameSite=Strict too, and the admin Mux refuses cross-origin changes:
// this check holds wherever the handler is mounted.
func pageRequest(r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	site := r.Header.Get("Sec-Fetch-Site")
	if site == "" {
		u, err := url.Parse(r.Header.Get("Origin"))
		if err == nil && u.Host != "" && u.Host == r.Host {
			site = "same-origin"
		}
	}
	t, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return site == "same-origin" && (t == "application/json" || t == "text/csv")
}

// WriteJSON answers with v as JSON and status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// IsLoopback reports whether a listen address binds only this host
// (127.0.0.0/8, ::1 or localhost); ":8081" binds every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// WarnIfOpen logs a warning when the admin listener is reachable from other
// hosts and its API has no token.
func WarnIfOpen(logger *slog.Logger, addr, token string) {
	if token == "" && !IsLoopback(addr) {
		logger.Warn("ADMIN_TOKEN is not set and the admin listener is not on loopback: anyone who reaches it by IP address can read and change the API; set ADMIN_TOKEN or bind ADMIN_ADDR to 127.0.0.1", "addr", addr)
	}
}

// Server is the admin http.Server: generous but bounded timeouts.
func Server(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
}

// Probe asks the admin listener at addr (":8081" means this host) whether
// the process is ready: the healthcheck subcommand for distroless images,
// which have no curl or wget.
func Probe(addr string, timeout time.Duration) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	c := &http.Client{Timeout: timeout}
	resp, err := c.Get("http://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("not ready: %s %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// Healthcheck is the -healthcheck mode of the binaries: probe, report, and
// return the exit code (0 ready, 1 not).
func Healthcheck(addr string, stderr io.Writer) int {
	if err := Probe(addr, 3*time.Second); err != nil {
		fmt.Fprintln(stderr, "unhealthy:", err)
		return 1
	}
	return 0
}

// SessionCookie is the cookie the /ui/ page's login sets: a browser cannot
// add a bearer header to an <img> or a form post. It is HttpOnly,
// SameSite=Strict and Path=/.
const SessionCookie = "wxgate_admin"

// SessionTTL is how long a session cookie is accepted after its login.
const SessionTTL = 12 * time.Hour

// NewSession returns a session cookie value for token, valid SessionTTL
// from now, and its expiry.
func NewSession(token string, now time.Time) (value string, expires time.Time) {
	expires = now.Add(SessionTTL).Truncate(time.Second)
	return SessionValue(token, expires), expires
}

// SessionValue is the session cookie's value for token until expires:
// "<expiry, unix seconds>.<HMAC of the expiry keyed by the token>". The
// cookie never holds ADMIN_TOKEN itself, every process that has the token
// accepts it, and the expiry is checked by the server (the browser's
// Max-Age is no defence against a stolen cookie).
func SessionValue(token string, expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return exp + "." + sessionMAC(token, exp)
}

func sessionMAC(token, exp string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("wxgate admin session v2\x00" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

// HasSession reports whether r carries an unexpired session cookie for token.
func HasSession(r *http.Request, token string) bool {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return false
	}
	exp, mac, ok := strings.Cut(c.Value, ".")
	if !ok || len(exp) > 20 {
		return false
	}
	// The MAC first, in constant time; the expiry it covers after.
	if !hmac.Equal([]byte(mac), []byte(sessionMAC(token, exp))) {
		return false
	}
	secs, err := strconv.ParseInt(exp, 10, 64)
	return err == nil && time.Now().Before(time.Unix(secs, 0))
}
