package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
	"github.com/wxgate/wxgate/shared/wechat"
	"github.com/wxgate/wxgate/shared/wechatapi"
)

// APIOptions wire the rules API.
type APIOptions struct {
	Set *Set
	// Account resolves ?account= (default "default"): false, after it has
	// answered (404), when there is no such account. (*accounts.Registry).
	// FromQuery is one.
	Account func(w http.ResponseWriter, r *http.Request) (id string, ok bool)
	// Labels tells an account's code label and group for a scene ({label},
	// {group}); nil: none.
	Labels func(account, scene string) (label, group string)
	// Import reads the account's console auto-replies as rules; nil: the
	// route answers 503.
	Import func(ctx context.Context, account string) ([]Rule, error)
}

// API serves an account's rules:
//
//	GET  /api/rules          {"revision":N,"rules":[…],"default":bool}
//	PUT  /api/rules          {"rules":[…]} with If-Match: N → {"revision":M,"rules":[…]};
//	                         412 if another change came first, 428 without If-Match,
//	                         400 naming the rule (from 0) and field
//	POST /api/rules/test     {"xml":"<xml>…</xml>"} → {"rule":name|null,"reply":{…}|null}: no side effect
//	POST /api/rules/import   the console's auto-replies as a draft, not applied
func API(o APIOptions) http.Handler {
	a := &api{o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/rules", a.get)
	mux.HandleFunc("PUT /api/rules", a.put)
	mux.HandleFunc("POST /api/rules/test", a.test)
	mux.HandleFunc("POST /api/rules/import", a.importRules)
	return mux
}

type api struct{ o APIOptions }

func (a *api) get(w http.ResponseWriter, r *http.Request) {
	account, ok := a.o.Account(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	rules, rev, stored, err := a.o.Set.Get(ctx, account)
	if err != nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "rules store unavailable")
		return
	}
	w.Header().Set("ETag", strconv.FormatUint(rev, 10))
	admin.WriteJSON(w, http.StatusOK, map[string]any{"revision": rev, "rules": rules, "default": !stored})
}

func (a *api) put(w http.ResponseWriter, r *http.Request) {
	account, ok := a.o.Account(w, r)
	if !ok {
		return
	}
	match := strings.Trim(strings.TrimSpace(r.Header.Get("If-Match")), `"`)
	if match == "" {
		admin.WriteError(w, http.StatusPreconditionRequired, "If-Match: <revision> is required (GET /api/rules gives it; 0 when none are stored)")
		return
	}
	rev, err := strconv.ParseUint(match, 10, 64)
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "If-Match: want the revision, a whole number")
		return
	}
	var body struct {
		Rules []json.RawMessage `json:"rules"`
	}
	if err := admin.DecodeJSON(io.LimitReader(r.Body, MaxDocBytes+1<<10), &body); err != nil {
		admin.BadRequest(w, err)
		return
	}
	rules, err := DecodeRules(body.Rules)
	if err != nil {
		writeRuleError(w, err)
		return
	}
	if rules == nil {
		writeRuleError(w, &Error{Index: -1, Field: "rules", Msg: "required (an empty list answers every message success)"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	next, err := a.o.Set.Put(ctx, account, rules, rev)
	switch {
	case errors.Is(err, ErrRevision):
		admin.WriteError(w, http.StatusPreconditionFailed, "the rules changed since revision "+match+": GET them again")
	case err != nil:
		writeRuleError(w, err)
	default:
		w.Header().Set("ETag", strconv.FormatUint(next, 10))
		admin.WriteJSON(w, http.StatusOK, map[string]any{"revision": next, "rules": rules})
	}
}

// Result is a dry run's answer.
type Result struct {
	Rule    *string  `json:"rule"`
	Index   *int     `json:"index"`
	Reply   *Reply   `json:"reply"`
	Actions []Action `json:"actions"`
}

func (a *api) test(w http.ResponseWriter, r *http.Request) {
	account, ok := a.o.Account(w, r)
	if !ok {
		return
	}
	var body struct {
		XML   string             `json:"xml"`
		Rules *[]json.RawMessage `json:"rules"` // a draft to try instead of the stored rules
	}
	if err := admin.DecodeJSON(io.LimitReader(r.Body, MaxDocBytes+64<<10), &body); err != nil {
		admin.BadRequest(w, err)
		return
	}
	m, err := wechat.Parse([]byte(body.XML))
	if err != nil {
		admin.WriteError(w, http.StatusBadRequest, "xml: "+err.Error())
		return
	}
	e := a.o.Set.Engine(account)
	if body.Rules != nil {
		draft, err := DecodeRules(*body.Rules)
		if err == nil {
			e, err = Compile(draft)
		}
		if err != nil {
			writeRuleError(w, err)
			return
		}
	}
	admin.WriteJSON(w, http.StatusOK, Test(e, m, func(scene string) (string, string) {
		if a.o.Labels == nil {
			return "", ""
		}
		return a.o.Labels(account, scene)
	}))
}

// Test is a dry run: which rule decides m, and what it would answer (a
// text's placeholders filled in), with no side effect.
func Test(e *Engine, m *wechat.Message, labels Labels) Result {
	in := InputOf(m)
	i := e.Match(in)
	// No rule: answered "success", as a none reply is.
	res := Result{Actions: []Action{}, Reply: &Reply{Type: ReplyNone}}
	if i < 0 {
		return res
	}
	rule := e.Rule(i)
	res.Rule, res.Index, res.Actions = &rule.Name, &i, append(res.Actions, rule.Actions...)
	reply := rule.Reply
	if reply.Type == ReplyText {
		out := Render(&reply, in, labels)
		if out == nil {
			reply = Reply{Type: ReplyNone}
		} else {
			reply.Content = out.Content
		}
	}
	res.Reply = &reply
	return res
}

func (a *api) importRules(w http.ResponseWriter, r *http.Request) {
	account, ok := a.o.Account(w, r)
	if !ok {
		return
	}
	if a.o.Import == nil {
		admin.WriteError(w, http.StatusServiceUnavailable, "importing needs WeChat's API: set the account's AppSecret")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	rules, err := a.o.Import(ctx, account)
	switch {
	case errors.Is(err, wechatapi.ErrOff):
		admin.WriteError(w, http.StatusServiceUnavailable, "importing needs WeChat's API: set the account's AppSecret")
		return
	case err != nil:
		admin.WriteError(w, http.StatusBadGateway, "import: "+err.Error())
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"rules": rules, "applied": false})
}

// writeRuleError answers 400 naming the rule and field when an Error says
// them, 503 otherwise (the store).
func writeRuleError(w http.ResponseWriter, err error) {
	var re *Error
	if !errors.As(err, &re) {
		admin.WriteError(w, http.StatusServiceUnavailable, "rules store unavailable")
		return
	}
	v := map[string]any{"error": re.Error(), "field": re.Field}
	if re.Index >= 0 {
		v["index"] = re.Index
	}
	admin.WriteJSON(w, http.StatusBadRequest, v)
}

// fields are the names a rule's objects may have: anything else is named
// in a 400, with its rule's index.
var fields = map[string]map[string]bool{
	"":        {"name": true, "when": true, "reply": true, "actions": true},
	"when":    {"event": true, "scene": true, "scene_prefix": true, "keyword": true, "match": true, "key": true},
	"reply":   {"type": true, "content": true, "media_id": true, "articles": true, "subject": true, "timeout_ms": true},
	"article": {"title": true, "description": true, "url": true, "pic_url": true},
	"action":  {"tag": true},
}

// DecodeRules reads a JSON rule list, refusing unknown fields and values of
// the wrong type with an Error naming the rule (from 0) and the field. It
// does not Validate.
func DecodeRules(raw []json.RawMessage) ([]Rule, error) {
	if raw == nil {
		return nil, nil
	}
	out := make([]Rule, len(raw))
	for i, b := range raw {
		if err := checkFields(b, "", ""); err != nil {
			err.(*Error).Index = i
			return nil, err
		}
		if err := json.Unmarshal(b, &out[i]); err != nil {
			re := &Error{Index: i, Field: "(rule)", Msg: "want a JSON object"}
			if te := (*json.UnmarshalTypeError)(nil); errors.As(err, &te) && te.Field != "" {
				re.Field, re.Msg = te.Field, "want a "+te.Type.String()
			}
			return nil, re
		}
	}
	return out, nil
}

// checkFields refuses names fields[kind] does not list, in b and the
// objects below it; path is where b is in the rule.
func checkFields(b json.RawMessage, kind, path string) error {
	var obj map[string]json.RawMessage
	if json.Unmarshal(b, &obj) != nil {
		return nil // not an object: Unmarshal names the type error
	}
	for name, v := range obj {
		field := strings.TrimPrefix(path+"."+name, ".")
		if !fields[kind][name] {
			return &Error{Field: field, Msg: "unknown field"}
		}
		var sub string
		switch {
		case kind == "" && (name == "when" || name == "reply"):
			sub = name
		case kind == "reply" && name == "articles", kind == "" && name == "actions":
			var items []json.RawMessage
			if json.Unmarshal(v, &items) != nil {
				continue
			}
			item := map[string]string{"articles": "article", "actions": "action"}[name]
			for j, it := range items {
				if err := checkFields(it, item, fmt.Sprintf("%s[%d]", field, j)); err != nil {
					return err
				}
			}
			continue
		default:
			continue
		}
		if err := checkFields(v, sub, field); err != nil {
			return err
		}
	}
	return nil
}
