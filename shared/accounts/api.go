package accounts

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
)

// API serves the accounts:
//
//	GET    /api/accounts        {"accounts":[…]}, default first
//	POST   /api/accounts        201 with the account; 409 if the id exists; 400 naming the bad field
//	GET    /api/accounts/{id}   the account, or 404
//	PATCH  /api/accounts/{id}   the fields given change
//	DELETE /api/accounts/{id}   204
//
// No answer ever holds a secret: "has_appsecret" and "aes_keys" stand for
// them. Without ACCOUNTS_SECRET_KEY, POST and PATCH answer 503.
func API(r *Registry) http.Handler {
	a := api{r}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/accounts", a.list)
	mux.HandleFunc("POST /api/accounts", a.sealing(a.create))
	mux.HandleFunc("GET /api/accounts/{id}", a.get)
	mux.HandleFunc("PATCH /api/accounts/{id}", a.sealing(a.patch))
	mux.HandleFunc("DELETE /api/accounts/{id}", a.remove)
	return mux
}

// FromQuery is the account ?account= names (default: default). For one
// this process does not serve it answers 404 itself, and ok is false: an id
// that is not ValidID never reaches a key or a label.
func (r *Registry) FromQuery(w http.ResponseWriter, req *http.Request) (id string, ok bool) {
	id = cmp.Or(req.URL.Query().Get("account"), DefaultID)
	if _, ok = r.Get(id); !ok {
		admin.WriteError(w, http.StatusNotFound, "no such account")
	}
	return id, ok
}

type api struct{ r *Registry }

// sealing answers 503 before reading anything when accounts cannot be
// written here: without ACCOUNTS_SECRET_KEY no document is worth checking.
func (a api) sealing(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if a.r.sealer == nil {
			a.fail(w, ErrNoSecretKey)
			return
		}
		h(w, req)
	}
}

// maxBody bounds an account document.
const maxBody = 64 << 10

func (a api) list(w http.ResponseWriter, _ *http.Request) {
	admin.WriteJSON(w, http.StatusOK, map[string]any{"accounts": a.r.Views()})
}

func (a api) get(w http.ResponseWriter, req *http.Request) {
	v, ok := a.r.View(req.PathValue("id"))
	if !ok {
		admin.WriteError(w, http.StatusNotFound, "no such account")
		return
	}
	admin.WriteJSON(w, http.StatusOK, v)
}

func (a api) create(w http.ResponseWriter, req *http.Request) {
	var n struct {
		ID string `json:"id"`
		Patch
	}
	if err := admin.DecodeJSON(io.LimitReader(req.Body, maxBody), &n); err != nil {
		admin.BadRequest(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	v, err := a.r.Create(ctx, n.Apply(Account{ID: n.ID}))
	if err != nil {
		a.fail(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusCreated, v)
}

func (a api) patch(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	if _, ok := a.r.View(id); !ok {
		admin.WriteError(w, http.StatusNotFound, "no such account")
		return
	}
	var p Patch
	if err := admin.DecodeJSON(io.LimitReader(req.Body, maxBody), &p); err != nil {
		admin.BadRequest(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	v, err := a.r.Update(ctx, id, p)
	if err != nil {
		a.fail(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusOK, v)
}

func (a api) remove(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	if err := a.r.Delete(ctx, req.PathValue("id")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a api) fail(w http.ResponseWriter, err error) {
	var fe *admin.FieldError
	switch {
	case errors.As(err, &fe):
		admin.BadRequest(w, err)
	case errors.Is(err, ErrExists), errors.Is(err, ErrDefault), errors.Is(err, ErrLimit), errors.Is(err, ErrSealed):
		admin.WriteError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrNotFound):
		admin.WriteError(w, http.StatusNotFound, "no such account")
	case errors.Is(err, ErrNoSecretKey):
		admin.WriteError(w, http.StatusServiceUnavailable, err.Error())
	default:
		admin.WriteError(w, http.StatusServiceUnavailable, "accounts store unavailable")
	}
}
