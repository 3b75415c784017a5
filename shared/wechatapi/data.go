package wechatapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// The APIs of this file, as the metric's api label names them.
const (
	APIUserSummary      = "getusersummary"
	APIInterfaceSummary = "getinterfacesummary"
	APITagsCreate       = "tags_create"
	APITagsGet          = "tags_get"
	APITagsBatchTagging = "tags_batchtagging"
	APITagsGetIDList    = "tags_getidlist"
	APIAutoreplyInfo    = "get_current_autoreply_info"
)

// WeChat's limits on these APIs, as its documentation states them.
const (
	UserSummaryDays  = 7  // the longest span of one getusersummary call
	InterfaceDays    = 30 // of one getinterfacesummary call
	MaxTagNameBytes  = 30
	MaxTagBatch      = 50 // OpenIDs per batchtagging call
	MaxTagsPerPerson = 20
	// SourceQRCode is getusersummary's user_source of follows through a
	// QR code (扫描二维码).
	SourceQRCode = 30
)

// ErrBadArgument wraps a call refused before WeChat was asked: it breaks
// one of WeChat's documented limits.
var ErrBadArgument = errors.New("refused before asking WeChat")

// UserSummary is one getusersummary row: a day's follows and unfollows by
// one source (SourceQRCode for QR codes).
type UserSummary struct {
	Date       string `json:"ref_date"`
	Source     int    `json:"user_source"`
	NewUser    int64  `json:"new_user"`
	CancelUser int64  `json:"cancel_user"`
}

// InterfaceSummary is one getinterfacesummary row: a day's callbacks as
// WeChat counted them, times in milliseconds.
type InterfaceSummary struct {
	Date          string `json:"ref_date"`
	CallbackCount int64  `json:"callback_count"`
	FailCount     int64  `json:"fail_count"`
	TotalTimeCost int64  `json:"total_time_cost"`
	MaxTimeCost   int64  `json:"max_time_cost"`
}

// UserSummary returns the follows and unfollows of the days from..to
// (YYYY-MM-DD, Beijing time, at most 7 days). WeChat publishes a day after
// 08:00 the next: a day it has not published is missing from the list, and
// a range reaching today is refused (61501).
func (c *Client) UserSummary(ctx context.Context, from, to string) ([]UserSummary, error) {
	var out struct {
		List []UserSummary `json:"list"`
	}
	err := c.datacube(ctx, APIUserSummary, "/datacube/getusersummary", from, to, UserSummaryDays, &out)
	return out.List, err
}

// InterfaceSummary returns WeChat's count of the callbacks of the days
// from..to (at most 30 days), as UserSummary.
func (c *Client) InterfaceSummary(ctx context.Context, from, to string) ([]InterfaceSummary, error) {
	var out struct {
		List []InterfaceSummary `json:"list"`
	}
	err := c.datacube(ctx, APIInterfaceSummary, "/datacube/getinterfacesummary", from, to, InterfaceDays, &out)
	return out.List, err
}

func (c *Client) datacube(ctx context.Context, api, path, from, to string, span int, out any) error {
	b, err1 := time.Parse(time.DateOnly, from)
	e, err2 := time.Parse(time.DateOnly, to)
	switch {
	case err1 != nil || err2 != nil:
		return fmt.Errorf("wechat %s: %w: dates must be YYYY-MM-DD", api, ErrBadArgument)
	case e.Before(b) || e.Sub(b) >= time.Duration(span)*24*time.Hour:
		return fmt.Errorf("wechat %s: %w: %s to %s is not 1 to %d days", api, ErrBadArgument, from, to, span)
	}
	return c.withToken(ctx, api, http.MethodPost, path, map[string]string{"begin_date": from, "end_date": to}, out)
}

// Tag is one of the account's user tags.
type Tag struct {
	ID    int    `json:"id"`
	Name  string `json:"name"`
	Count int    `json:"count"` // people with it (tags/get only)
}

// CreateTag creates a user tag: at most 30 bytes, unique in the account
// (45157), at most 100 per account (45056).
func (c *Client) CreateTag(ctx context.Context, name string) (Tag, error) {
	if name == "" || len(name) > MaxTagNameBytes {
		return Tag{}, fmt.Errorf("wechat %s: %w: a tag name is 1 to %d bytes", APITagsCreate, ErrBadArgument, MaxTagNameBytes)
	}
	var out struct {
		Tag Tag `json:"tag"`
	}
	err := c.withToken(ctx, APITagsCreate, http.MethodPost, "/cgi-bin/tags/create", map[string]any{"tag": map[string]string{"name": name}}, &out)
	return out.Tag, err
}

// Tags returns the account's user tags.
func (c *Client) Tags(ctx context.Context) ([]Tag, error) {
	var out struct {
		Tags []Tag `json:"tags"`
	}
	err := c.withToken(ctx, APITagsGet, http.MethodGet, "/cgi-bin/tags/get", nil, &out)
	return out.Tags, err
}

// TagUsers gives the tag to 1 to 50 people. WeChat refuses the whole call
// when one of them has 20 tags already (45059), answers 45159 for a tag
// it does not know (and, the community reports, now and then for one it
// does: worth a retry), and 45009 when the day's quota is spent.
func (c *Client) TagUsers(ctx context.Context, tagID int, openids []string) error {
	if len(openids) == 0 || len(openids) > MaxTagBatch {
		return fmt.Errorf("wechat %s: %w: 1 to %d OpenIDs a call, not %d", APITagsBatchTagging, ErrBadArgument, MaxTagBatch, len(openids))
	}
	return c.withToken(ctx, APITagsBatchTagging, http.MethodPost, "/cgi-bin/tags/members/batchtagging",
		map[string]any{"openid_list": openids, "tagid": tagID}, nil)
}

// UserTags returns the ids of a person's tags.
func (c *Client) UserTags(ctx context.Context, openid string) ([]int, error) {
	var out struct {
		IDs []int `json:"tagid_list"`
	}
	err := c.withToken(ctx, APITagsGetIDList, http.MethodPost, "/cgi-bin/tags/getidlist", map[string]string{"openid": openid}, &out)
	return out.IDs, err
}

// Autoreply is get_current_autoreply_info's answer: the replies set in the
// WeChat console (自动回复), which developer mode turns off.
type Autoreply struct {
	FollowReplyOpen  int            `json:"is_add_friend_reply_open"`
	AutoreplyOpen    int            `json:"is_autoreply_open"`
	FollowReply      *AutoreplyItem `json:"add_friend_autoreply_info"`
	DefaultReply     *AutoreplyItem `json:"message_default_autoreply_info"`
	KeywordAutoreply struct {
		List []KeywordRule `json:"list"`
	} `json:"keyword_autoreply_info"`
}

// AutoreplyItem is one reply: type text (Content the text), img, voice or
// video (Content the media), or news (NewsInfo the articles).
type AutoreplyItem struct {
	Type     string `json:"type"`
	Content  string `json:"content"`
	NewsInfo *struct {
		List []NewsArticle `json:"list"`
	} `json:"news_info,omitempty"`
}

// NewsArticle is one article of a news reply.
type NewsArticle struct {
	Title      string `json:"title"`
	Author     string `json:"author"`
	Digest     string `json:"digest"`
	ShowCover  int    `json:"show_cover"`
	CoverURL   string `json:"cover_url"`
	ContentURL string `json:"content_url"`
	SourceURL  string `json:"source_url"`
}

// KeywordRule is one keyword rule: its keywords (MatchMode contain or
// equal) and its replies (ReplyMode reply_all or random_one).
type KeywordRule struct {
	Name       string `json:"rule_name"`
	CreateTime int64  `json:"create_time"`
	ReplyMode  string `json:"reply_mode"`
	Keywords   []struct {
		Type      string `json:"type"`
		MatchMode string `json:"match_mode"`
		Content   string `json:"content"`
	} `json:"keyword_list_info"`
	Replies []AutoreplyItem `json:"reply_list_info"`
}

// AutoreplyInfo returns the console's auto-replies.
func (c *Client) AutoreplyInfo(ctx context.Context) (Autoreply, error) {
	var out Autoreply
	err := c.withToken(ctx, APIAutoreplyInfo, http.MethodGet, "/cgi-bin/get_current_autoreply_info", nil, &out)
	return out, err
}
