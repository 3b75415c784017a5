package gateway

import (
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/wxgate/wxgate/shared/accounts"
	"github.com/wxgate/wxgate/shared/wechat"
)

// account is what the gateway needs of one account, made once per change
// of the registry: a request costs one map read.
type account struct {
	id         string
	token      string
	mode       wechat.Mode
	ciphers    []*wechat.Cipher // the current key's, then the previous one's
	originalID string
	m          *accountMetrics
	src        *accounts.Account // what it was made from
}

// table is every account served, as of the registry's generation gen.
type table struct {
	gen  uint64
	byID map[string]*account
}

// compile makes what the gateway needs of a.
func compile(a *accounts.Account) (*account, error) {
	c := &account{id: a.ID, token: a.Token, mode: wechat.Mode(a.EffectiveMode()), originalID: a.OriginalID, src: a}
	if c.token == "" {
		return nil, fmt.Errorf("account %s: no token", a.ID)
	}
	for _, key := range []string{a.EncodingAESKey, a.PreviousEncodingAESKey} {
		if key == "" {
			continue
		}
		ci, err := wechat.NewCipher(key, a.AppID)
		if err != nil {
			return nil, fmt.Errorf("account %s: EncodingAESKey: %w", a.ID, err)
		}
		c.ciphers = append(c.ciphers, ci)
	}
	switch {
	case !c.mode.Known():
		return nil, fmt.Errorf("account %s: unknown mode %q (want plain, compat or safe)", a.ID, c.mode)
	case c.mode != wechat.ModePlain && len(c.ciphers) == 0:
		return nil, fmt.Errorf("account %s: mode %s needs an EncodingAESKey", a.ID, c.mode)
	}
	return c, nil
}

// refresh makes the table current with the registry: accounts that did
// not change are kept as they are, with their metrics; those that went
// take their series with them.
func (g *Gateway) refresh() *table {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := g.table.Load()
	gen := g.o.Accounts.Generation() // before reading: a change after it is seen next time
	if old.byID != nil && old.gen == gen {
		return old
	}
	t := &table{gen: gen, byID: make(map[string]*account, len(old.byID))}
	for _, a := range g.o.Accounts.Accounts() {
		if prev := old.byID[a.ID]; prev != nil && prev.src == a {
			t.byID[a.ID] = prev
			continue
		}
		c, err := compile(a)
		if err != nil { // validated when stored: another version's value
			g.o.Logger.Error("an account that cannot be served; its callbacks are refused 404", "err", err)
			continue
		}
		if prev := old.byID[a.ID]; prev != nil {
			c.m = prev.m
		} else {
			c.m = g.metrics.of(a.ID)
		}
		t.byID[a.ID] = c
	}
	for id := range old.byID {
		if t.byID[id] == nil {
			g.metrics.drop(id)
		}
	}
	g.table.Store(t)
	return t
}

// account returns the account the request is for (/wechat is the
// default's), or answers 404, as for a path that is no route, and returns
// nil. An id that is no account id (a path trick) goes no further than a
// map read: it reaches no subject, key, label or log line.
func (g *Gateway) account(c *gin.Context, start time.Time) *account {
	id := c.Param("id")
	if id == "" {
		id = accounts.DefaultID
	}
	t := g.table.Load()
	if t.gen != g.o.Accounts.Generation() {
		t = g.refresh()
	}
	if a := t.byID[id]; a != nil {
		return a
	}
	detail := "not an account id"
	if accounts.ValidID(id) {
		detail = "no account " + id
	}
	a := g.unknown
	a.m.rejected[rejectAccount].Inc()
	g.o.Logger.Warn("rejected", "account", a.id, "reason", rejectAccount, "status", http.StatusNotFound, "detail", detail, "method", c.Request.Method, "remote", c.ClientIP())
	g.observe(a, outcomeRejected, start)
	closeConnection(c)
	c.Data(http.StatusNotFound, "text/plain; charset=utf-8", notFound)
	return nil
}

// notFound is gin's answer to a path that is no route: an unknown account
// looks the same.
var notFound = []byte("404 page not found")
