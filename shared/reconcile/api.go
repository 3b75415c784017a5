package reconcile

import (
	"cmp"
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/wxgate/wxgate/shared/admin"
)

// Route is the API's path.
const Route = "/api/reconciliation"

// MaxDays is the longest period one request covers, counted inclusive.
const MaxDays = 31

// onDemand bounds what a GET spends completing rows before it answers
// with the rows as they are.
const onDemand = 10 * time.Second

// Handler serves, for the account ?account=<id> (default: default;
// unknown: 404):
//
//	GET /api/reconciliation?from=YYYY-MM-DD&to=YYYY-MM-DD[&format=csv]
//
// → {"account","time_zone","days":[Day…]}, one per day. Days whose figures
// are due and missing are completed first, within onDemand. With token set
// it needs the bearer token, or the /ui/ page's session cookie.
func (r *Reconciler) Handler(token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Route, r.serve)
	return admin.RequireToken(token, mux)
}

func (r *Reconciler) serve(w http.ResponseWriter, req *http.Request) {
	account, ok := r.o.Accounts.FromQuery(w, req)
	if !ok {
		return
	}
	q := req.URL.Query()
	from, to, err := r.period(q.Get("from"), q.Get("to"))
	if f := q.Get("format"); err == nil && f != "" && f != "json" && f != "csv" {
		err = fmt.Errorf("format=%q: want json or csv", f)
	}
	if err != nil {
		r.o.Logger.Info("reconciliation request refused", "err", err)
		admin.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), onDemand)
	if err := r.complete(ctx, account, from, to, false); err != nil {
		r.o.Logger.Warn("reconciliation: rows not completed; answering with them as they are", "account", account, "err", err)
	}
	cancel()
	ctx, cancel = context.WithTimeout(req.Context(), 5*time.Second)
	defer cancel()
	days, err := r.view(ctx, account, from, to)
	if err != nil {
		r.o.Logger.Warn("reconciliation: rows not read", "account", account, "err", err)
		admin.WriteError(w, http.StatusServiceUnavailable, "reconciliation store unavailable")
		return
	}
	if q.Get("format") == "csv" {
		writeCSV(w, days)
		return
	}
	admin.WriteJSON(w, http.StatusOK, map[string]any{"account": account, "time_zone": r.o.Zone.String(), "days": days})
}

// period reads from and to: dates in the zone, in order, at most MaxDays.
func (r *Reconciler) period(from, to string) (time.Time, time.Time, error) {
	var t [2]time.Time
	for i, v := range []string{from, to} {
		d, err := time.Parse(time.DateOnly, v)
		if err != nil {
			return t[0], t[1], fmt.Errorf("%s=%q: want a date, YYYY-MM-DD", [2]string{"from", "to"}[i], v)
		}
		t[i] = d
	}
	if n := int(t[1].Sub(t[0]).Hours()/24) + 1; n < 1 || n > MaxDays {
		return t[0], t[1], fmt.Errorf("from=%s to=%s: want from no later than to, at most %d days apart (inclusive)", from, to, MaxDays)
	}
	return r.day(t[0], 0), r.day(t[1], 0), nil
}

// csvHeader are the JSON field names, the error's flattened.
var csvHeader = []string{"date", "new_followers_by_qr", "wechat_new_user_qr", "wechat_cancel_user_qr", "callbacks",
	"fallbacks", "wechat_callback_count", "wechat_fail_count", "wechat_max_time_cost_ms",
	"wechat_error_errcode", "wechat_error_errmsg", "wechat_error_hint"}

// writeCSV writes days as the other CSV answers are: a UTF-8 BOM (for
// Excel), a header row, a row per day; null is an empty cell.
func writeCSV(w http.ResponseWriter, days []Day) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	_, _ = w.Write([]byte("\uFEFF"))
	cw := csv.NewWriter(w)
	_ = cw.Write(csvHeader)
	for _, d := range days {
		row := []string{d.Date}
		for _, v := range []*int64{d.NewFollowersByQR, d.WeChatNewUserQR, d.WeChatCancelUserQR, d.Callbacks,
			d.Fallbacks, d.WeChatCallbackCount, d.WeChatFailCount, d.WeChatMaxTimeCostMS} {
			row = append(row, cell(v))
		}
		e := cmp.Or(d.WeChatError, &WeChatError{})
		code := ""
		if e.Errcode != 0 {
			code = strconv.Itoa(e.Errcode)
		}
		_ = cw.Write(append(row, code, e.Errmsg, e.Hint))
	}
	cw.Flush()
}

func cell(v *int64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatInt(*v, 10)
}
