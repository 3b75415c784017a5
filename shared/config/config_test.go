package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFromEnv(t *testing.T) {
	c := Defaults()
	err := c.FromEnv(env(map[string]string{
		"WECHAT_TOKEN":          "tok",
		"WECHAT_TIMESTAMP_SKEW": "0",
		"REPLY_TIMEOUT":         "1500ms",
		"NATS_URL":              " nats://a:4222 , ,nats://b:4222",
		"MAX_BODY_BYTES":        "131072",
		"REPLY_DEFAULT":         "",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Token != "tok" || c.TimestampSkew != 0 || c.ReplyTimeout != 1500*time.Millisecond || c.MaxBodyBytes != 131072 {
		t.Errorf("config = %+v", c)
	}
	if got := c.NATSServers(); got != "nats://a:4222,nats://b:4222" {
		t.Errorf("NATSServers = %q", got)
	}
	if c.Replies.Default != "" || c.Replies.Scan == "" {
		t.Errorf("an empty REPLY_DEFAULT must turn the default off and leave the others: %+v", c.Replies)
	}
	if c.HTTPAddr != ":8080" || c.AdminAddr != ":8081" || c.DataDir != "./data" {
		t.Errorf("defaults changed: %+v", c)
	}
}

func TestFromEnvErrors(t *testing.T) {
	c := Defaults()
	err := c.FromEnv(env(map[string]string{"REPLY_TIMEOUT": "soon", "WECHAT_TIMESTAMP_SKEW": "-1s", "MAX_BODY_BYTES": "12"}))
	for _, want := range []string{"REPLY_TIMEOUT", "WECHAT_TIMESTAMP_SKEW", "MAX_BODY_BYTES"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
}

func TestValidateIngress(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(c *Config) {}, ""},
		{"no token", func(c *Config) { c.Token = "" }, "WECHAT_TOKEN"},
		{"aes without appid", func(c *Config) { c.EncodingAESKey = "k"; c.AppID = "" }, "WECHAT_APPID"},
		{"timeout past wechat deadline", func(c *Config) { c.ReplyTimeout = 5 * time.Second }, "REPLY_TIMEOUT"},
	}
	for _, tt := range tests {
		c := Defaults()
		c.Token = "secret-token"
		tt.mod(&c)
		err := c.ValidateIngress()
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: error = %v, want mention of %q", tt.name, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret-token") {
			t.Errorf("%s: error leaks the token", tt.name)
		}
	}
}
