package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
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
	mux.HandleFunc("POST /api/accounts", a.create)
	mux.HandleFunc("GET /api/accounts/{id}", a.get)
	mux.HandleFunc("PATCH /api/accounts/{id}", a.patch)
	mux.HandleFunc("DELETE /api/accounts/{id}", a.remove)
	return mux
}

type api struct{ r *Registry }

func (a api) list(w http.ResponseWriter, _ *http.Request) {
	admin.WriteJSON(w, http.StatusOK, map[string]any{"accounts": a.r.Views()})
}

func (a api) get(w http.ResponseWriter, req *http.Request) {
	v, ok := a.r.View(req.PathValue("id"))
	if !ok {
		writeError(w, http.StatusNotFound, "no such account")
		return
	}
	admin.WriteJSON(w, http.StatusOK, v)
}

func (a api) create(w http.ResponseWriter, req *http.Request) {
	var n New
	if err := decode(req, &n); err != nil {
		badBody(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), 10*time.Second)
	defer cancel()
	v, err := a.r.Create(ctx, n.Account())
	if err != nil {
		a.fail(w, err)
		return
	}
	admin.WriteJSON(w, http.StatusCreated, v)
}

func (a api) patch(w http.ResponseWriter, req *http.Request) {
	id := req.PathValue("id")
	if _, ok := a.r.View(id); !ok {
		writeError(w, http.StatusNotFound, "no such account")
		return
	}
	var p Patch
	if err := decode(req, &p); err != nil {
		badBody(w, err)
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
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		badBody(w, err)
	case errors.Is(err, ErrExists):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrDefault), errors.Is(err, ErrLimit):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "no such account")
	case errors.Is(err, ErrNoSecretKey):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, ErrSealed):
		writeError(w, http.StatusConflict, err.Error())
	default:
		writeError(w, http.StatusServiceUnavailable, "accounts store unavailable")
	}
}

// decode reads one JSON object, refusing unknown fields (naming them) and
// anything after it.
func decode(req *http.Request, v any) error {
	d := json.NewDecoder(io.LimitReader(req.Body, 64<<10))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return &FieldError{Field: strings.Trim(f, `"`), Msg: "unknown field"}
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return &FieldError{Field: te.Field, Msg: "want a " + te.Type.String()}
		}
		return fmt.Errorf("want one JSON object: %w", err)
	}
	if d.More() {
		return errors.New("want one JSON object, nothing after it")
	}
	return nil
}

func writeError(w http.ResponseWriter, code int, msg string) {
	admin.WriteJSON(w, code, map[string]string{"error": msg})
}

// badBody answers 400 for a body that is not an account document, naming
// the field when one is to blame.
func badBody(w http.ResponseWriter, err error) {
	var fe *FieldError
	if errors.As(err, &fe) {
		admin.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": fe.Error(), "field": fe.Field})
		return
	}
	writeError(w, http.StatusBadRequest, err.Error())
}
